//! The central view (the running job's preview, an image opened large, or two compared) and the
//! gallery strip.

use egui::{Ui, Vec2};

use super::super::state::*;
use super::super::{Action, GalleryAction, JobAction};
use super::short_duration;
use crate::gallery::history::{GalleryEntry, SortOrder};

/// The running job's live preview, or the gallery image opened large, or two side by side.
pub(super) fn central(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
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

fn entry_caption(entry: &GalleryEntry) -> String {
    let seed = entry.metadata.spec.seed.map_or("—".to_string(), |s| s.to_string());
    let matched = entry.metadata.identity_match.map_or(String::new(), |m| format!(" · match {m:.2}"));
    format!("seed {seed}{matched}")
}

pub(super) fn gallery(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
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
            for group in strip_groups(gallery.sorted()) {
                match group.as_slice() {
                    [entry] => tile(ui, state, entry, actions),
                    sweep => sweep_group(ui, state, sweep, actions),
                }
            }
        });
    });
}

/// The strip's entries, each alone except a sweep's images, which stay together (in sweep
/// order) wherever the sort put the first of them.
fn strip_groups<'a>(entries: impl IntoIterator<Item = &'a GalleryEntry>) -> Vec<Vec<&'a GalleryEntry>> {
    let mut groups: Vec<Vec<&GalleryEntry>> = Vec::new();
    let mut sweep_groups: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    for entry in entries {
        let job = entry.metadata.job;
        if entry.metadata.sweep.is_some() && job != 0 {
            if let Some(&at) = sweep_groups.get(&job) {
                groups[at].push(entry);
                continue;
            }
            sweep_groups.insert(job, groups.len());
        }
        groups.push(vec![entry]);
    }
    for group in &mut groups {
        group.sort_by_key(|entry| entry.metadata.index);
    }
    groups
}

fn sweep_group(ui: &mut Ui, state: &AppState, sweep: &[&GalleryEntry], actions: &mut Vec<Action>) {
    let kind = match sweep[0].metadata.sweep {
        Some(crate::engine::Sweep::Pose { .. }) => "Pose sweep",
        Some(crate::engine::Sweep::Expression { .. }) | None => "Expression sweep",
    };
    // The group's title and button stand to the left of its tiles, so that a sweep takes no
    // more of the strip's height than single images do.
    egui::Frame::group(ui.style()).inner_margin(4.0).show(ui, |ui| {
        ui.horizontal(|ui| {
            ui.vertical(|ui| {
                ui.label(kind);
                ui.label(format!("{} images", sweep.len()));
                if ui.small_button("Contact sheet…").on_hover_text("Save the sweep side by side as one PNG").clicked() {
                    actions.push(GalleryAction::BrowseContactSheet(sweep.iter().map(|e| e.id).collect()).into());
                }
            });
            for entry in sweep {
                tile(ui, state, entry, actions);
            }
        });
    });
}

fn tile(ui: &mut Ui, state: &AppState, entry: &GalleryEntry, actions: &mut Vec<Action>) {
    let gallery = &state.gallery;
    let id = entry.id;
    let is_selected = gallery.selection.contains(&id);
    ui.vertical(|ui| {
        let response = match gallery.thumbnails.get(&id) {
            Some(texture) => {
                ui.add(egui::Button::image(egui::Image::new(texture).fit_to_exact_size(Vec2::splat(128.0))).selected(is_selected))
            }
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
