//! The panels: small functions that read the state and return the user's actions.

use egui::{Align2, Color32, FontId, Pos2, Rect, RichText, Sense, Stroke, Ui, Vec2};

use super::{Action, GalleryAction, JobAction, ModelsAction, PhotoAction};
use super::state::*;
use crate::gallery::history::SortOrder;

/// The whole window.
pub fn show(ui: &mut Ui, state: &AppState) -> Vec<Action> {
    let mut actions = Vec::new();
    egui::Panel::top("top").show(ui, |ui| top_bar(ui, state, &mut actions));
    egui::Panel::bottom("gallery").resizable(true).default_size(230.0).min_size(190.0).show(ui, |ui| gallery(ui, state, &mut actions));
    egui::Panel::left("photo").resizable(true).default_size(420.0).show(ui, |ui| {
        // Settings and Generate first, so they stay in view whatever the photo's size.
        settings(ui, state, &mut actions);
        queue(ui, state, &mut actions);
        ui.separator();
        egui::ScrollArea::vertical().show(ui, |ui| photo(ui, state, &mut actions));
    });
    egui::CentralPanel::default().show(ui, |ui| central(ui, state, &mut actions));
    if state.models.window_open {
        models_window(ui.ctx(), state, &mut actions);
    }
    actions
}

const WARNING: Color32 = Color32::from_rgb(230, 160, 60);
const ERROR: Color32 = Color32::from_rgb(235, 90, 90);

/// The models folder, file by file: state, size, download progress, licence; download, cancel,
/// retry and check.
fn models_window(ctx: &egui::Context, state: &AppState, actions: &mut Vec<Action>) {
    use crate::models::check::{FileState, human_bytes};
    let models = &state.models;
    let mut open = true;
    egui::Window::new("Models").open(&mut open).default_width(900.0).default_height(560.0).vscroll(true).show(ctx, |ui| {
        ui.horizontal(|ui| {
            ui.label(format!("Folder: {}", state.models_dir.display()));
            if ui.add_enabled(models.task.is_none(), egui::Button::new("Change folder…")).clicked() {
                actions.push(ModelsAction::Browse.into());
            }
        });
        // Above the list, so that they stay in view however long it is.
        ui.horizontal(|ui| {
            let missing = models.downloadable().len() + usize::from(models.runtime_to_fetch().is_some());
            match &models.task {
                Some(task) => {
                    ui.spinner();
                    // A check reads each file once and cannot be stopped halfway; a download can.
                    ui.label(if task.verifying { "Checking files…" } else { "Downloading…" });
                    if !task.verifying && ui.button("Cancel").clicked() {
                        actions.push(ModelsAction::CancelTask.into());
                    }
                }
                None => {
                    let label = format!("Download ({missing})");
                    let hint = "Missing and wrong files, from the Hugging Face Hub or its local cache; resumable, checksum-verified";
                    if ui.add_enabled(missing > 0, egui::Button::new(label)).on_hover_text(hint).clicked() {
                        actions.push(ModelsAction::Download(Vec::new()).into());
                    }
                    if ui.button("Check files").on_hover_text("Open every file as the app would and compare it with its download checksum").clicked() {
                        actions.push(ModelsAction::Verify.into());
                    }
                }
            }
        });
        ui.separator();
        egui::Grid::new("model files").striped(true).num_columns(5).spacing([12.0, 6.0]).show(ui, |ui| {
            for heading in ["File", "Needed for", "State", "Licence", ""] {
                ui.strong(heading);
            }
            ui.end_row();
            for status in &models.statuses {
                let file = status.file;
                ui.label(file.relative_path).on_hover_text(file.what);
                ui.label(file.needed_for.label());
                let transfer = models.transfers.get(file.relative_path);
                match transfer {
                    Some(t) if t.total > 0 && !t.failed => {
                        ui.vertical(|ui| {
                            let fraction = t.done as f32 / t.total as f32;
                            ui.add(egui::ProgressBar::new(fraction).desired_width(260.0).text(format!(
                                "{} of {}",
                                human_bytes(t.done),
                                human_bytes(t.total)
                            )));
                            let speed = t.rate.bytes_per_second().map(|s| format!("{}/s", human_bytes(s as u64))).unwrap_or_default();
                            let eta = t.rate.time_left(t.total).map(|d| format!(", {} left", short_duration(d.as_secs_f64()))).unwrap_or_default();
                            ui.small(format!("{speed}{eta} {}", t.note.as_deref().unwrap_or_default()));
                        });
                    }
                    Some(t) => {
                        let color = if t.failed { ERROR } else { ui.visuals().text_color() };
                        state_label(ui, t.note.as_deref().unwrap_or_default(), color);
                    }
                    None => {
                        let color = match status.state {
                            FileState::Present { .. } => ui.visuals().text_color(),
                            FileState::Missing { .. } if !file.needed_for.required() => ui.visuals().weak_text_color(),
                            _ => WARNING,
                        };
                        state_label(ui, &status.describe(), color);
                    }
                }
                ui.label(file.licence);
                let failed = transfer.is_some_and(|t| t.failed);
                if failed && models.task.is_none() && ui.button("Retry").clicked() {
                    actions.push(ModelsAction::Download(vec![file.relative_path]).into());
                }
                if !failed {
                    ui.label("");
                }
                ui.end_row();
            }
        });
        ui.separator();
        let runtime_transfer = models.transfers.get(super::models_task::RUNTIME_ROW);
        match (&models.runtime, runtime_transfer) {
            (_, Some(t)) if t.total > 0 && !t.failed => {
                ui.add(egui::ProgressBar::new(t.done as f32 / t.total as f32).desired_width(260.0).text(format!("ONNX Runtime: {} of {}", human_bytes(t.done), human_bytes(t.total))));
            }
            (_, Some(t)) if t.failed => {
                ui.horizontal(|ui| {
                    ui.colored_label(ERROR, format!("ONNX Runtime: {}", t.note.as_deref().unwrap_or_default()));
                    if models.task.is_none() && ui.button("Retry").clicked() {
                        actions.push(ModelsAction::Download(vec![super::models_task::RUNTIME_ROW]).into());
                    }
                });
            }
            (Some(Ok(path)), _) => {
                ui.label(format!("ONNX Runtime {}: {}", crate::face::runtime::ONNXRUNTIME_VERSION, path.display()));
            }
            (Some(Err(message)), _) => {
                ui.colored_label(WARNING, format!("ONNX Runtime: {message}"));
            }
            (None, _) => {}
        }
        ui.small("insightface's models and the Expression Adapter are for non-commercial use; check each licence before using results commercially.");
    });
    if !open {
        actions.push(ModelsAction::ShowWindow(false).into());
    }
}

/// A file's state, wrapped so that a long explanation cannot push the Retry button out of view.
fn state_label(ui: &mut Ui, text: &str, color: Color32) {
    ui.vertical(|ui| {
        ui.set_max_width(340.0);
        ui.add(egui::Label::new(RichText::new(text).color(color)).wrap());
    });
}

/// 42 s, 3 min 5 s, 1 h 12 min.
fn short_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

fn top_bar(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    ui.horizontal(|ui| {
        if ui.button("Open photo…").on_hover_text("Ctrl+O, or drop a photo on the window").clicked() {
            actions.push(PhotoAction::Browse.into());
        }
        ui.menu_button("Recent", |ui| {
            if state.settings.recent_photos.is_empty() {
                ui.label("No recent photos");
            }
            for path in &state.settings.recent_photos {
                if ui.button(path.display().to_string()).clicked() {
                    actions.push(PhotoAction::Open(path.clone()).into());
                }
            }
        });
        ui.separator();
        if ui.button("Models…").on_hover_text(state.models_dir.display().to_string()).clicked() {
            actions.push(ModelsAction::ShowWindow(true).into());
        }
        if let Some(what) = &state.busy {
            ui.separator();
            ui.spinner();
            ui.label(what);
        }
    });
    let missing = state.models.missing_required();
    if !missing.is_empty() {
        ui.horizontal_wrapped(|ui| {
            ui.colored_label(WARNING, format!("Model files missing in {}: {}.", state.models_dir.display(), missing.join(", ")));
            if ui.button("Get the models…").clicked() {
                actions.push(ModelsAction::ShowWindow(true).into());
            }
        });
    }
    for (index, notice) in state.notices.iter().enumerate() {
        ui.horizontal(|ui| {
            let color = if notice.is_error { ERROR } else { ui.visuals().text_color() };
            ui.colored_label(color, &notice.text);
            if ui.small_button("Dismiss").clicked() {
                actions.push(Action::DismissNotice(index));
            }
        });
    }
}

/// The photo with every face boxed and numbered; a click on a box selects that face.
fn photo(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    ui.heading("Photo");
    if let Some(path) = &state.analyzing {
        ui.horizontal(|ui| {
            ui.spinner();
            // The file name only: a long path would widen the panel for good.
            ui.label(format!("Finding faces in {}…", crate::file_name(path))).on_hover_text(path.display().to_string());
        });
    }
    let Some(photo) = &state.photo else {
        ui.label("Drop a photo here, or Open photo… (Ctrl+O).");
        return;
    };
    // Fit the photo in the panel, leaving room for the face and identity rows below it.
    let max_height = (ui.available_height() - 110.0).max(120.0);
    let scale = (ui.available_width().min(600.0) / photo.size[0] as f32).min(max_height / photo.size[1] as f32);
    let size = Vec2::new(photo.size[0] as f32 * scale, photo.size[1] as f32 * scale);
    let (rect, response) = ui.allocate_exact_size(size, Sense::click());
    ui.painter().image(photo.texture.id(), rect, Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)), Color32::WHITE);
    let to_screen = |x: f32, y: f32| rect.min + Vec2::new(x * scale, y * scale);
    for (index, face) in photo.faces.iter().enumerate() {
        let selected = photo.selected_face == Some(index);
        let color = if selected { Color32::from_rgb(80, 220, 120) } else { Color32::from_rgb(250, 200, 60) };
        let face_rect = Rect::from_min_max(to_screen(face.bbox[0], face.bbox[1]), to_screen(face.bbox[2], face.bbox[3]));
        ui.painter().rect_stroke(face_rect, 2.0, Stroke::new(if selected { 3.0 } else { 1.5 }, color), egui::StrokeKind::Outside);
        ui.painter().text(face_rect.left_top(), Align2::LEFT_BOTTOM, format!("{}", index + 1), FontId::proportional(14.0), color);
    }
    if response.clicked()
        && let Some(pointer) = response.interact_pointer_pos()
    {
        let (x, y) = ((pointer.x - rect.min.x) / scale, (pointer.y - rect.min.y) / scale);
        // The smallest box under the pointer, so nested detections stay reachable.
        let hit = (0..photo.faces.len())
            .filter(|&i| {
                let b = photo.faces[i].bbox;
                x >= b[0] && x <= b[2] && y >= b[1] && y <= b[3]
            })
            .min_by(|&a, &b| photo.faces[a].area().total_cmp(&photo.faces[b].area()));
        if let Some(index) = hit {
            actions.push(PhotoAction::SelectFace(index).into());
        }
    }
    ui.label(crate::file_name(&photo.path)).on_hover_text(photo.path.display().to_string());
    if photo.faces.is_empty() {
        ui.colored_label(Color32::from_rgb(235, 90, 90), "No face found. Try a photo with more margin around the face.");
        return;
    }
    ui.horizontal_wrapped(|ui| {
        ui.label("Face:");
        for (index, face) in photo.faces.iter().enumerate() {
            let label = format!("Face {}", index + 1);
            let button = ui.selectable_label(photo.selected_face == Some(index), label);
            if button.on_hover_text(format!("detector score {:.2}", face.score)).clicked() {
                actions.push(PhotoAction::SelectFace(index).into());
            }
        }
    });
    identity(ui, state, actions);
}

/// Several photos of one person make a steadier identity: faces kept here are averaged with the
/// one selected now.
fn identity(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    ui.horizontal_wrapped(|ui| {
        let hint = "Keep this face, then open another photo of the same person: the identity combines them";
        if ui.button("Keep face, add another photo").on_hover_text(hint).clicked() {
            actions.push(PhotoAction::KeepFace.into());
        }
        if !state.kept_faces.is_empty() {
            let faces = crate::engine::IdentitySource::Faces { faces: state.kept_faces.iter().map(|kept| kept.face.clone()).collect() };
            ui.label(format!("Identity combines {faces} and the selected face"));
            if ui.small_button("Clear").on_hover_text("Use only the selected face").clicked() {
                actions.push(PhotoAction::ClearKeptFaces.into());
            }
        }
    });
}

fn settings(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    ui.heading("Settings");
    // The widgets edit a copy; a changed copy comes back as one action.
    let mut settings = state.settings.clone();
    let spec = &mut settings.spec;
    ui.add(egui::Slider::new(&mut spec.steps, 1..=100).text("Steps"));
    ui.add(egui::Slider::new(&mut spec.guidance, 1.0..=10.0).fixed_decimals(1).text("Guidance"));
    ui.add(egui::Slider::new(&mut spec.num_images, 1..=8).text("Images"));
    ui.horizontal(|ui| {
        let label = ui.label("Seed");
        ui.add(egui::DragValue::new(spec.seed.get_or_insert(0)).range(0..=u32::MAX as u64)).labelled_by(label.id);
        ui.checkbox(&mut settings.seed_locked, "Lock").on_hover_text("Keep this seed; otherwise each Generate draws a new one");
        if ui.button("New seed").on_hover_text("Draw a new random seed").clicked() {
            actions.push(JobAction::NewSeed.into());
        }
    });
    egui::CollapsingHeader::new("Image size and device").id_salt("runtime").show(ui, |ui| runtime_settings(ui, state, &mut settings));
    if settings != state.settings {
        actions.push(Action::UpdateSettings(Box::new(settings)));
    }
    ui.horizontal(|ui| {
        let can_generate = state.photo.as_ref().is_some_and(|p| p.selected_face.is_some());
        let generate = ui.add_enabled(can_generate, egui::Button::new(RichText::new("Generate").strong()));
        if generate.on_hover_text("Ctrl+Enter").clicked() {
            actions.push(JobAction::Generate.into());
        }
        let cancellable = state.running.as_ref().is_some_and(|r| !r.cancelling);
        if ui.add_enabled(cancellable, egui::Button::new("Cancel")).on_hover_text("Esc").clicked() {
            actions.push(JobAction::CancelRunning.into());
        }
    });
}

/// Image size, device and precision, and what the loaded models run on.
fn runtime_settings(ui: &mut Ui, state: &AppState, settings: &mut Settings) {
    use crate::engine::{DeviceChoice, Precision, runtime::CUDA_BUILD};
    let spec = &mut settings.spec;
    egui::ComboBox::from_label("Size")
        .selected_text(spec.size.map_or("Model's own (512)".to_string(), |s| format!("{s} × {s}")))
        .show_ui(ui, |ui| {
            ui.selectable_value(&mut spec.size, None, "Model's own (512)");
            for side in [256, 384, 512, 640, 768, 1024] {
                ui.selectable_value(&mut spec.size, Some(side), format!("{side} × {side}"));
            }
        })
        .response
        .on_hover_text("Arc2Face was trained at 512 × 512: other sizes work, with less consistent faces");
    ui.horizontal(|ui| {
        egui::ComboBox::from_label("Device").selected_text(device_label(spec.runtime.device)).show_ui(ui, |ui| {
            ui.selectable_value(&mut spec.runtime.device, DeviceChoice::Auto, device_label(DeviceChoice::Auto));
            ui.selectable_value(&mut spec.runtime.device, DeviceChoice::Cpu, device_label(DeviceChoice::Cpu));
            ui.add_enabled_ui(CUDA_BUILD, |ui| {
                ui.selectable_value(&mut spec.runtime.device, DeviceChoice::Cuda(0), device_label(DeviceChoice::Cuda(0)))
                    .on_disabled_hover_text("This build has no CUDA support");
            });
        });
        egui::ComboBox::from_label("Precision").selected_text(precision_label(spec.runtime.precision)).show_ui(ui, |ui| {
            for precision in [Precision::Auto, Precision::F32, Precision::F16, Precision::Bf16] {
                ui.selectable_value(&mut spec.runtime.precision, precision, precision_label(precision));
            }
        });
    });
    match &state.runtime_in_use {
        Some(runtime) => ui.small(format!("Models loaded on {runtime}")),
        None => ui.small("Models load with the first generation"),
    };
}

fn device_label(device: crate::engine::DeviceChoice) -> String {
    use crate::engine::DeviceChoice;
    match device {
        DeviceChoice::Auto => "Auto".into(),
        DeviceChoice::Cpu => "CPU".into(),
        DeviceChoice::Cuda(n) => format!("CUDA {n}"),
    }
}

fn precision_label(precision: crate::engine::Precision) -> &'static str {
    use crate::engine::Precision;
    match precision {
        Precision::Auto => "Auto",
        Precision::F32 => "f32",
        Precision::F16 => "f16 (half the memory)",
        Precision::Bf16 => "bf16 (GPU only)",
    }
}

fn queue(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    if state.queue.is_empty() {
        return;
    }
    ui.label(format!("Queued ({})", state.queue.len()));
    for (position, job) in state.queue.iter().enumerate() {
        ui.horizontal(|ui| {
            let seed = job.spec.seed.map_or("—".to_string(), |s| s.to_string());
            ui.label(format!("{} image(s), {} steps, seed {seed}", job.spec.num_images, job.spec.steps));
            if position > 0 && ui.small_button("Up").on_hover_text("Run earlier").clicked() {
                actions.push(JobAction::MoveQueuedUp(job.job_id).into());
            }
            if position + 1 < state.queue.len() && ui.small_button("Down").on_hover_text("Run later").clicked() {
                actions.push(JobAction::MoveQueuedDown(job.job_id).into());
            }
            if ui.small_button("Remove").on_hover_text("Remove from the queue").clicked() {
                actions.push(JobAction::RemoveQueued(job.job_id).into());
            }
        });
    }
}

/// The running job's live preview, or the gallery image opened large, or two side by side.
fn central(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    let gallery = &state.gallery;
    if let Some((a, b)) = gallery.comparing {
        ui.horizontal(|ui| {
            ui.heading("Compare");
            if ui.button("Close").clicked() {
                actions.push(GalleryAction::Open(None).into());
            }
        });
        ui.columns(2, |columns| {
            large_entry(&mut columns[0], state, a);
            large_entry(&mut columns[1], state, b);
        });
        return;
    }
    if let Some(id) = gallery.opened {
        ui.horizontal(|ui| {
            ui.heading("Image");
            if ui.button("Close").clicked() {
                actions.push(GalleryAction::Open(None).into());
            }
            if ui.button("Use this image's seed").clicked() {
                actions.push(JobAction::UseSeedOf(id).into());
            }
        });
        large_entry(ui, state, id);
        return;
    }
    match &state.running {
        Some(running) => {
            let request = &running.request;
            ui.heading(format!("Generating image {} of {}", running.image_index + 1, request.spec.num_images));
            let total = (request.spec.num_images * request.spec.steps).max(1);
            let eta = running.seconds_left().map(|s| format!(", about {} left", short_duration(s))).unwrap_or_default();
            ui.add(egui::ProgressBar::new(running.steps_done as f32 / total as f32).text(format!(
                "step {}/{} · {:.2} it/s{eta}",
                running.step,
                running.steps.max(request.spec.steps),
                running.iterations_per_second()
            )));
            if running.cancelling {
                ui.label("Cancelling after this step…");
            }
            if let Some(preview) = &running.preview {
                let side = ui.available_width().min(ui.available_height()).max(64.0);
                ui.add(egui::Image::new(preview).fit_to_exact_size(Vec2::splat(side)));
            }
        }
        None => {
            ui.centered_and_justified(|ui| {
                ui.label("Pick a face and press Generate. Each step's preview appears here.");
            });
        }
    }
}

fn large_entry(ui: &mut Ui, state: &AppState, id: u64) {
    let Some(entry) = state.gallery.get(id) else { return };
    ui.label(entry_caption(entry));
    // The thumbnail stands in until the full-size image is decoded.
    if let Some(texture) = state.gallery.full_size(id).or_else(|| state.gallery.thumbnails.get(&id)) {
        let side = ui.available_width().min(ui.available_height()).max(64.0);
        ui.add(egui::Image::new(texture).fit_to_exact_size(Vec2::splat(side)));
    }
}

fn entry_caption(entry: &crate::gallery::history::GalleryEntry) -> String {
    let seed = entry.metadata.spec.seed.map_or("—".to_string(), |s| s.to_string());
    let matched = entry.metadata.identity_match.map_or(String::new(), |m| format!(" · match {m:.2}"));
    format!("seed {seed}{matched}")
}

fn gallery(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    let gallery = &state.gallery;
    let selected = gallery.selection.len();
    ui.horizontal(|ui| {
        ui.heading("Gallery");
        ui.label(format!("{} image(s), {selected} selected", gallery.entries.len()));
        ui.separator();
        for (label, order) in [("Newest", SortOrder::Newest), ("Oldest", SortOrder::Oldest), ("Best match", SortOrder::BestMatch)] {
            if ui.selectable_label(gallery.sort == order, label).clicked() {
                actions.push(GalleryAction::SetSort(order).into());
            }
        }
        ui.separator();
        if ui.button("Select all").clicked() {
            actions.push(GalleryAction::SelectAll.into());
        }
        if ui.add_enabled(selected == 2, egui::Button::new("Compare")).clicked() {
            actions.push(GalleryAction::CompareSelected.into());
        }
        if ui.add_enabled(selected > 0, egui::Button::new("Export…")).on_hover_text("Ctrl+E").clicked() {
            actions.push(GalleryAction::BrowseExport.into());
        }
        if ui.add_enabled(selected > 0, egui::Button::new("Delete")).on_hover_text("Delete key").clicked() {
            actions.push(GalleryAction::DeleteSelected.into());
        }
        if ui.add_enabled(gallery.last_removed.is_some(), egui::Button::new("Undo delete")).clicked() {
            actions.push(GalleryAction::UndoDelete.into());
        }
    });
    egui::ScrollArea::vertical().show(ui, |ui| {
        ui.horizontal_wrapped(|ui| {
            for entry in gallery.sorted() {
                let id = entry.id;
                let is_selected = gallery.selection.contains(&id);
                ui.vertical(|ui| {
                    let response = match gallery.thumbnails.get(&id) {
                        Some(texture) => ui.add(
                            egui::Button::image(egui::Image::new(texture).fit_to_exact_size(Vec2::splat(128.0))).selected(is_selected),
                        ),
                        None => ui.add_sized([128.0, 128.0], egui::Button::new("loading").selected(is_selected)),
                    };
                    let response = response.on_hover_text("Click to select (Shift/Ctrl to extend), double-click to open");
                    if response.double_clicked() {
                        actions.push(GalleryAction::Open(Some(id)).into());
                    } else if response.clicked() {
                        let modifiers = ui.input(|i| i.modifiers);
                        actions.push(GalleryAction::Select { id, extend: modifiers.shift, toggle: modifiers.command }.into());
                    }
                    ui.horizontal(|ui| {
                        ui.label(entry_caption(entry));
                        if ui.selectable_label(entry.favourite, "Fav").on_hover_text("Favourite").clicked() {
                            actions.push(GalleryAction::ToggleFavourite(id).into());
                        }
                    });
                });
            }
        });
    });
}
