//! The photo with its faces, and the faces kept for a combined identity.

use egui::{Align2, Color32, FontId, Pos2, Rect, Sense, Stroke, Ui, Vec2};

use super::super::state::*;
use super::super::{Action, ModelsAction, PhotoAction};

/// The photo with every face boxed and numbered; a click on a box selects that face.
pub(super) fn photo(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
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
    // Fit the photo in the panel, leaving room for the face strip and identity rows below it.
    let max_height = (ui.available_height() - 150.0).max(120.0);
    let scale = (ui.available_width().min(600.0) / photo.size[0] as f32).min(max_height / photo.size[1] as f32);
    let size = Vec2::new(photo.size[0] as f32 * scale, photo.size[1] as f32 * scale);
    let (rect, response) = ui.allocate_exact_size(size, Sense::click());
    ui.painter().image(photo.texture.id(), rect, Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)), Color32::WHITE);
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
    let hovered = face_strip(ui, photo, actions);
    face_boxes(ui, photo, rect, scale, hovered);
    identity(ui, state, actions);
    keep_look(ui, state, actions);
}

/// "Keep the photo's look": the Reference Adapter on the selected face's photo, and its scale.
fn keep_look(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    let mut settings = state.settings.clone();
    let adapter = crate::models::REFERENCE_ADAPTER;
    ui.horizontal_wrapped(|ui| {
        ui.checkbox(&mut settings.use_reference, "Keep the photo's look")
            .on_hover_text("New images keep this photo's background, light and clothes (the Reference Adapter)");
        let hint = format!("{} is not in the models folder", adapter.relative_path);
        if state.models.is_missing(adapter) && ui.small_button("Get the adapter…").on_hover_text(hint).clicked() {
            actions.push(ModelsAction::Download(vec![adapter.relative_path]).into());
            actions.push(ModelsAction::ShowWindow(true).into());
        }
    });
    if settings.use_reference {
        let reference = settings.spec.reference.get_or_insert_with(Default::default);
        ui.add(egui::Slider::new(&mut reference.scale, 0.0..=1.0).fixed_decimals(2).text("Look strength"));
        ui.small("Lower keeps the expression truer; higher keeps the background and pose.");
    }
    if settings != state.settings {
        actions.push(Action::UpdateSettings(Box::new(settings)));
    }
}

/// Every face as a small picture, largest first, in a row that scrolls; the selected one
/// highlighted. Returns the face under the pointer.
fn face_strip(ui: &mut Ui, photo: &PhotoState, actions: &mut Vec<Action>) -> Option<usize> {
    let mut hovered = None;
    ui.label(format!("{} face(s), largest first — pick one:", photo.faces.len()));
    egui::ScrollArea::horizontal().id_salt("face strip").show(ui, |ui| {
        ui.horizontal(|ui| {
            for &index in &photo.by_size {
                let image = egui::Image::new(&photo.face_crops[index]).fit_to_exact_size(Vec2::splat(FACE_PICTURE));
                let response = ui.add(egui::Button::image(image).selected(photo.selected_face == Some(index)));
                let label = format!("Face {}", index + 1);
                response.widget_info(|| egui::WidgetInfo::selected(egui::Role::Button, true, photo.selected_face == Some(index), &label));
                let response = response.on_hover_text(format!("{label} · detector score {:.2}", photo.faces[index].score));
                if response.hovered() {
                    hovered = Some(index);
                }
                if response.clicked() {
                    actions.push(PhotoAction::SelectFace(index).into());
                }
            }
        });
    });
    hovered
}

/// The side of a face picture in the strip, in points.
const FACE_PICTURE: f32 = 48.0;
/// Above this many faces, only the selected and hovered faces are numbered on the photo.
const NUMBERED_FACES: usize = 12;

/// Each face's box over the photo, clipped to it: the selected one green, the hovered one
/// white, the rest yellow.
fn face_boxes(ui: &Ui, photo: &PhotoState, rect: Rect, scale: f32, hovered: Option<usize>) {
    let painter = ui.painter_at(rect);
    let to_screen = |x: f32, y: f32| rect.min + Vec2::new(x * scale, y * scale);
    // The selected and hovered faces last, so they are drawn on top.
    let emphasised = |i: usize| photo.selected_face == Some(i) || hovered == Some(i);
    let order = (0..photo.faces.len()).filter(|&i| !emphasised(i)).chain((0..photo.faces.len()).filter(|&i| emphasised(i)));
    for index in order {
        let face = &photo.faces[index];
        let (color, width) = match (photo.selected_face == Some(index), hovered == Some(index)) {
            (_, true) => (Color32::WHITE, 3.0),
            (true, false) => (Color32::from_rgb(80, 220, 120), 3.0),
            (false, false) => (Color32::from_rgb(250, 200, 60), 1.5),
        };
        let face_rect = Rect::from_min_max(to_screen(face.bbox[0], face.bbox[1]), to_screen(face.bbox[2], face.bbox[3]));
        painter.rect_stroke(face_rect, 2.0, Stroke::new(width, color), egui::StrokeKind::Outside);
        if photo.faces.len() <= NUMBERED_FACES || emphasised(index) {
            // Inside the box's top-left corner, so the number stays on the photo.
            let at = face_rect.left_top().clamp(rect.min, rect.max - Vec2::new(16.0, 16.0));
            painter.text(at + Vec2::splat(2.0), Align2::LEFT_TOP, format!("{}", index + 1), FontId::proportional(14.0), color);
        }
    }
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
