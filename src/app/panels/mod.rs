//! The panels: small functions that read the state and return the user's actions, one module
//! per part of the window.

mod expression;
mod gallery;
mod models;
mod photo;
mod pose;
mod settings;

pub use pose::pose_drop_zone;

use egui::{Color32, Ui};

use super::state::*;
use super::{Action, JobAction, ModelsAction, PhotoAction};

/// The whole window.
pub fn show(ui: &mut Ui, state: &AppState) -> Vec<Action> {
    let mut actions = Vec::new();
    egui::Panel::top("top").show(ui, |ui| top_bar(ui, state, &mut actions));
    egui::Panel::bottom("gallery")
        .resizable(true)
        .default_size(230.0)
        .min_size(190.0)
        .show(ui, |ui| gallery::gallery(ui, state, &mut actions));
    egui::Panel::left("photo").resizable(true).default_size(420.0).show(ui, |ui| {
        // Settings and Generate first, so they stay in view whatever the photo's size.
        settings::settings(ui, state, &mut actions);
        settings::queue(ui, state, &mut actions);
        ui.separator();
        egui::ScrollArea::vertical().show(ui, |ui| photo::photo(ui, state, &mut actions));
    });
    egui::Panel::right("controls").resizable(true).default_size(330.0).show(ui, |ui| {
        egui::ScrollArea::vertical().show(ui, |ui| {
            // The panels edit a copy of the settings; a changed copy comes back as one action.
            let mut settings = state.settings.clone();
            egui::CollapsingHeader::new("Pose").default_open(true).show(ui, |ui| pose::pose(ui, state, &mut settings, &mut actions));
            egui::CollapsingHeader::new("Expression")
                .default_open(true)
                .show(ui, |ui| expression::expression(ui, state, &mut settings, &mut actions));
            if settings != state.settings {
                actions.push(Action::UpdateSettings(Box::new(settings)));
            }
        });
    });
    egui::CentralPanel::default().show(ui, |ui| gallery::central(ui, state, &mut actions));
    if state.models.window_open {
        models::models_window(ui.ctx(), state, &mut actions);
    }
    actions
}

pub(super) const WARNING: Color32 = Color32::from_rgb(230, 160, 60);

pub(super) const ERROR: Color32 = Color32::from_rgb(235, 90, 90);

/// 42 s, 3 min 5 s, 1 h 12 min.
pub(super) fn short_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// A sweep's controls: remember the current value as the start, and queue the sweep from it to
/// the current value, one seed across the settings' number of images.
fn sweep_row(ui: &mut Ui, state: &AppState, kind: SweepKind, actions: &mut Vec<Action>) {
    let what = match kind {
        SweepKind::Pose => "pose",
        SweepKind::Expression => "expression",
    };
    ui.horizontal(|ui| {
        if ui.button(format!("Sweep from this {what}")).on_hover_text(format!("Remember this {what} as the start of a sweep")).clicked() {
            actions.push(JobAction::SetSweepStart(kind).into());
        }
        let images = state.settings.spec.num_images.max(2);
        let can_generate = state.photo.as_ref().is_some_and(|p| p.selected_face.is_some());
        let hint = format!("One seed, {images} images, from the remembered {what} to this one");
        if ui.add_enabled(can_generate, egui::Button::new(format!("Sweep to this {what}"))).on_hover_text(hint).clicked() {
            actions.push(JobAction::GenerateSweep(kind).into());
        }
    });
}

/// "3 model files missing (about 4.2 GB), needed for generation and face analysis."
fn missing_files_text(missing: &[crate::models::ModelFile]) -> String {
    let bytes: u64 = missing.iter().map(|f| f.typical_bytes).sum();
    let size = if bytes > 0 { format!(" (about {})", crate::models::check::human_bytes(bytes)) } else { String::new() };
    let mut needed_for: Vec<&str> = missing.iter().map(|f| f.needed_for.label()).collect();
    needed_for.dedup();
    let files = if missing.len() == 1 { "model file".to_string() } else { format!("{} model files", missing.len()) };
    format!("{files} missing{size}, needed for {}.", needed_for.join(" and "))
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
            ui.colored_label(WARNING, missing_files_text(&missing)).on_hover_text(format!(
                "In {}: {}",
                state.models_dir.display(),
                missing.iter().map(|f| f.relative_path).collect::<Vec<_>>().join(", ")
            ));
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
