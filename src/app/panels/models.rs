//! The Models window: every file of the models folder with its state, size, download progress
//! and licence; download, cancel, retry and check.

use egui::{Color32, RichText, Ui};

use super::super::state::*;
use super::super::{Action, ModelsAction};
use super::{ERROR, WARNING, short_duration};

/// The models folder, file by file: state, size, download progress, licence; download, cancel,
/// retry and check.
pub(super) fn models_window(ctx: &egui::Context, state: &AppState, actions: &mut Vec<Action>) {
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
        if let Some(message) = &models.unreachable {
            ui.add(egui::Label::new(RichText::new(message).color(ERROR)).wrap());
        }
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
                    Some(t) if t.progress.total > 0 && !t.failed => {
                        let p = &t.progress;
                        ui.vertical(|ui| {
                            let fraction = p.fraction();
                            ui.add(egui::ProgressBar::new(fraction).desired_width(260.0).text(format!(
                                "{} of {}",
                                human_bytes(p.done),
                                human_bytes(p.total)
                            )));
                            let speed = p.bytes_per_second().map(|s| format!("{}/s", human_bytes(s as u64))).unwrap_or_default();
                            let eta = p.time_left().map(|d| format!(", {} left", short_duration(d.as_secs_f64()))).unwrap_or_default();
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
        let runtime_transfer = models.transfers.get(super::super::models_task::RUNTIME_ROW);
        match (&models.runtime, runtime_transfer) {
            (_, Some(t)) if t.progress.total > 0 && !t.failed => {
                let p = &t.progress;
                let text = format!("ONNX Runtime: {} of {}", human_bytes(p.done), human_bytes(p.total));
                ui.add(egui::ProgressBar::new(p.fraction()).desired_width(260.0).text(text));
            }
            (_, Some(t)) if t.failed => {
                ui.horizontal(|ui| {
                    ui.colored_label(ERROR, format!("ONNX Runtime: {}", t.note.as_deref().unwrap_or_default()));
                    if models.task.is_none() && ui.button("Retry").clicked() {
                        actions.push(ModelsAction::Download(vec![super::super::models_task::RUNTIME_ROW]).into());
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
