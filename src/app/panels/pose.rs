//! The Pose panel: the head the pose ControlNet follows. Drag the head to turn it (yaw, pitch),
//! its ring to tilt it (roll), its chin to open the mouth, the wheel over it to size it; exact
//! values below it, presets, the pose of a photo's face, and beside them what the ControlNet
//! is shown.

use egui::{Color32, Id, Pos2, Rect, Sense, Stroke, Ui, Vec2};

use super::super::pose_view::{Overlay, VIEW_SIDE};
use super::super::state::*;
use super::super::{Action, ModelsAction, PoseAction};
use crate::engine::{HeadMesh, PoseSpec, PoseTarget};
use crate::models::{CONTROLNET_CONFIG, CONTROLNET_WEIGHTS, check::human_bytes};
use crate::pose::{HeadPose, LIMITS, PRESETS};

/// Where photos dropped count as dropped on the Pose panel (egui memory, read by the app).
const DROP_ZONE: &str = "pose-panel-drop-zone";

/// How a drag on the head started, so that it keeps doing the same thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grab {
    Turn,
    Roll,
    Jaw,
}

/// Degrees of yaw or pitch per point dragged, for a head `side` points wide: a drag across the
/// whole head turns it by 120°.
fn degrees_per_point(side: f32) -> f64 {
    120.0 / side as f64
}

/// The screen area of the Pose panel as last drawn.
pub fn pose_drop_zone(ctx: &egui::Context) -> Option<Rect> {
    ctx.data(|d| d.get_temp(Id::unique(DROP_ZONE)))
}

pub(super) fn pose(ui: &mut Ui, state: &AppState, settings: &mut Settings, actions: &mut Vec<Action>) {
    let top = ui.cursor().min;
    controlnet_row(ui, state, settings, actions);
    let spec = settings.spec.pose.get_or_insert_with(PoseSpec::default);
    match &mut spec.target {
        PoseTarget::Image { file } => {
            ui.label(format!("The pose is the conditioning image {file}, as the command line gave it."));
            if ui.button("Use the head instead").clicked() {
                spec.target = PoseTarget::Head { pose: HeadPose::FRONTAL, mesh: HeadMesh::Builtin };
            }
        }
        PoseTarget::Head { pose, .. } => {
            head_view(ui, state, pose);
            ui.horizontal(|ui| {
                values(ui, pose);
                conditioning_inset(ui, state);
            });
            pose_buttons(ui, state, pose, actions);
        }
    }
    ui.add(egui::Slider::new(&mut spec.controlnet_scale, 0.0..=2.0).fixed_decimals(2).text("Strength"))
        .on_hover_text("How strongly the pose steers (the ControlNet's residuals are multiplied by this)");
    ui.horizontal(|ui| {
        ui.label("Steps").on_hover_text("The part of the denoising steps during which the pose steers");
        ui.add(egui::DragValue::new(&mut spec.control_start).range(0.0..=0.95).speed(0.01).fixed_decimals(2).prefix("from "));
        ui.add(egui::DragValue::new(&mut spec.control_end).range(0.05..=1.0).speed(0.01).fixed_decimals(2).prefix("to "));
    });
    if spec.control_end <= spec.control_start {
        spec.control_end = (spec.control_start + 0.05).min(1.0);
        spec.control_start = spec.control_start.min(spec.control_end - 0.05);
    }
    super::sweep_row(ui, state, SweepKind::Pose, actions);
    let zone = Rect::from_min_max(top, Pos2::new(ui.max_rect().right(), ui.cursor().min.y));
    ui.ctx().data_mut(|d| d.insert_temp(Id::unique(DROP_ZONE), zone));
}

/// On/off, and the ControlNet's files when they are missing (with the download).
fn controlnet_row(ui: &mut Ui, state: &AppState, settings: &mut Settings, actions: &mut Vec<Action>) {
    ui.checkbox(&mut settings.use_pose, "Use this pose").on_hover_text("The pose ControlNet turns the face as the head is turned");
    let missing: Vec<_> = [CONTROLNET_CONFIG, CONTROLNET_WEIGHTS].into_iter().filter(|f| state.models.is_missing(*f)).collect();
    if missing.is_empty() {
        return;
    }
    let size = human_bytes(missing.iter().map(|f| f.typical_bytes).sum());
    ui.horizontal_wrapped(|ui| {
        ui.colored_label(super::WARNING, "Needs the pose ControlNet")
            .on_hover_text(format!("Not in the models folder: {}", missing.iter().map(|f| f.relative_path).collect::<Vec<_>>().join(", ")));
        if state.models.task.is_some() {
            ui.label("(a download is running: see Models…)");
        } else if ui.button(format!("Download ({size})")).clicked() {
            actions.push(ModelsAction::Download(missing.iter().map(|f| f.relative_path).collect()).into());
            actions.push(ModelsAction::ShowWindow(true).into());
        }
    });
}

/// The head, its skeleton, the roll ring, the chin handle and the conditioning inset; drags,
/// the wheel and double-clicks edit `pose`.
fn head_view(ui: &mut Ui, state: &AppState, pose: &mut HeadPose) {
    let side = ui.available_width().clamp(160.0, 300.0);
    let (rect, response) = ui.allocate_exact_size(Vec2::splat(side), Sense::click_and_drag());
    response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Canvas, true, "Head pose"));
    let Some(drawing) = &state.pose.drawing else {
        ui.put(rect, egui::Spinner::new());
        return;
    };
    let scale = side / VIEW_SIDE as f32;
    let at = |p: [f32; 2]| rect.min + Vec2::new(p[0], p[1]) * scale;
    let overlay = &drawing.overlay;
    let ring = RingGeometry { centre: at(overlay.centre), radius: 0.47 * side };
    let chin = at(overlay.chin);

    let grab_id = response.id.with("grab");
    if response.drag_started()
        && let Some(from) = response.interact_pointer_pos()
    {
        let grab = if ring.touches(from) {
            Grab::Roll
        } else if from.distance(chin) < 14.0 {
            Grab::Jaw
        } else {
            Grab::Turn
        };
        ui.data_mut(|d| d.insert_temp(grab_id, grab));
    }
    if response.dragged() {
        let delta = response.drag_delta();
        match ui.data(|d| d.get_temp::<Grab>(grab_id)).unwrap_or(Grab::Turn) {
            Grab::Turn => {
                pose.yaw += delta.x as f64 * degrees_per_point(side);
                pose.pitch -= delta.y as f64 * degrees_per_point(side);
            }
            Grab::Roll => {
                if let Some(now) = response.interact_pointer_pos() {
                    pose.roll += ring.turn(now - delta, now);
                }
            }
            Grab::Jaw => pose.jaw += delta.y as f64 / (0.3 * side as f64),
        }
    }
    if response.hovered() {
        let wheel = ui.input(|i| i.smooth_scroll_delta.y);
        if wheel != 0.0 {
            pose.scale *= (wheel as f64 * 0.002).exp();
            // The wheel sizes the head instead of scrolling the panel.
            ui.input_mut(|i| i.smooth_scroll_delta.y = 0.0);
        }
    }
    if response.double_clicked() {
        *pose = HeadPose { yaw: 0.0, pitch: 0.0, roll: 0.0, ..*pose };
    }
    *pose = pose.clamped();
    let hover = response.hover_pos();
    let cursor = match hover {
        Some(p) if ring.touches(p) => egui::CursorIcon::Alias,
        Some(p) if p.distance(chin) < 14.0 => egui::CursorIcon::ResizeVertical,
        _ => egui::CursorIcon::Grab,
    };
    response.on_hover_cursor(cursor).on_hover_text(
        "Drag to turn the head · drag the ring to tilt it · drag the chin to open the mouth · wheel to size it · double-click to face the camera",
    );

    let painter = ui.painter_at(rect);
    paint_turned(&painter, &drawing.view, rect, pose.roll);
    paint_overlay(&painter, overlay, &at);
    painter.circle_stroke(ring.centre, ring.radius, Stroke::new(1.5, Color32::from_white_alpha(90)));
    let knob_angle = (pose.roll as f32).to_radians();
    let knob = ring.centre + ring.radius * Vec2::new(-knob_angle.sin(), -knob_angle.cos());
    painter.circle_filled(knob, 6.0, Color32::from_rgb(250, 200, 80));
    painter.circle(chin, 7.0, Color32::from_black_alpha(60), Stroke::new(1.5, Color32::from_rgb(250, 200, 80)));
}

/// The upright head `view` painted over `rect` turned by `roll` as the finished image will be
/// ([`crate::pose::rotate_image`]): each corner samples the texture where that function would.
fn paint_turned(painter: &egui::Painter, view: &egui::TextureHandle, rect: Rect, roll: f64) {
    let side = VIEW_SIDE as u32;
    let mut mesh = egui::Mesh::with_texture(view.id());
    for corner in [rect.left_top(), rect.right_top(), rect.right_bottom(), rect.left_bottom()] {
        let at = (corner - rect.min) / rect.width() * VIEW_SIDE as f32;
        let [u, v] = crate::pose::unrotate_image_point([at.x, at.y], roll, side, side);
        mesh.vertices.push(egui::epaint::Vertex { pos: corner, uv: Pos2::new(u, v) / VIEW_SIDE as f32, color: Color32::WHITE });
    }
    mesh.add_triangle(0, 1, 2);
    mesh.add_triangle(0, 2, 3);
    painter.add(egui::Shape::mesh(mesh));
}

/// The ring the roll is dragged on.
struct RingGeometry {
    centre: Pos2,
    radius: f32,
}

impl RingGeometry {
    fn touches(&self, p: Pos2) -> bool {
        (p.distance(self.centre) - self.radius).abs() < 12.0
    }

    /// Degrees turned counter-clockwise (on screen) from `from` to `to` about the centre.
    fn turn(&self, from: Pos2, to: Pos2) -> f64 {
        // y grows downward on screen: flip it for counter-clockwise angles.
        let angle = |p: Pos2| (-(p.y - self.centre.y)).atan2(p.x - self.centre.x) as f64;
        let mut turned = (angle(to) - angle(from)).to_degrees();
        if turned > 180.0 {
            turned -= 360.0;
        } else if turned < -180.0 {
            turned += 360.0;
        }
        turned
    }
}

fn paint_overlay(painter: &egui::Painter, overlay: &Overlay, at: &impl Fn([f32; 2]) -> Pos2) {
    let line = Stroke::new(1.2, Color32::from_rgba_unmultiplied(255, 255, 255, 150));
    for (points, closed) in &overlay.outlines {
        let mut points: Vec<Pos2> = points.iter().map(|&p| at(p)).collect();
        if *closed && let Some(&first) = points.first() {
            points.push(first);
        }
        painter.add(egui::Shape::line(points, line));
    }
    let origin = at(overlay.origin);
    for (end, color) in
        overlay.axes.iter().zip([Color32::from_rgb(235, 80, 80), Color32::from_rgb(90, 200, 90), Color32::from_rgb(90, 140, 255)])
    {
        painter.line_segment([origin, at(*end)], Stroke::new(2.0, color));
    }
    painter.arrow(at(overlay.nose[0]), at(overlay.nose[1]) - at(overlay.nose[0]), Stroke::new(2.0, Color32::from_rgb(250, 200, 80)));
    for &p in &overlay.landmarks {
        painter.circle(at(p), 3.0, Color32::from_rgb(250, 200, 80), Stroke::new(1.0, Color32::BLACK));
    }
}

/// What the ControlNet will be shown, small beside the fields; larger while hovered.
fn conditioning_inset(ui: &mut Ui, state: &AppState) {
    let Some(drawing) = &state.pose.drawing else { return };
    let size = drawing.job_size;
    ui.add(egui::Image::new(&drawing.conditioning_texture).fit_to_exact_size(Vec2::splat(84.0))).on_hover_ui(|ui| {
        ui.label(format!("What the ControlNet is shown: {size} × {size}, upright (the finished image is tilted by the roll)"));
        ui.add(egui::Image::new(&drawing.conditioning_texture).fit_to_exact_size(Vec2::splat(256.0)));
    });
}

/// A field of degrees within ±`limit`.
fn degrees(value: &mut f64, limit: f64) -> egui::DragValue<'_> {
    egui::DragValue::new(value).range(-limit..=limit).speed(0.5).fixed_decimals(1).suffix("°")
}

/// The pose's values as exact fields, with their limits.
fn values(ui: &mut Ui, pose: &mut HeadPose) {
    egui::Grid::new("pose values").num_columns(4).spacing([8.0, 4.0]).show(ui, |ui| {
        labelled(ui, "Yaw", &format!("Turn: positive toward image right, ±{}°", LIMITS.yaw), degrees(&mut pose.yaw, LIMITS.yaw));
        labelled(ui, "Pitch", &format!("Nod: positive looks up, ±{}°", LIMITS.pitch), degrees(&mut pose.pitch, LIMITS.pitch));
        ui.end_row();
        let roll_hint = format!("Tilt: positive counter-clockwise, ±{}° (turns the finished image)", LIMITS.roll);
        labelled(ui, "Roll", &roll_hint, degrees(&mut pose.roll, LIMITS.roll));
        let jaw = egui::DragValue::new(&mut pose.jaw).range(LIMITS.jaw.0..=LIMITS.jaw.1).speed(0.01).fixed_decimals(2);
        labelled(ui, "Jaw", "Mouth: 0 closed … 1 open", jaw);
        ui.end_row();
        let size = egui::DragValue::new(&mut pose.scale).range(LIMITS.scale.0..=LIMITS.scale.1).speed(0.005).fixed_decimals(2).suffix("×");
        labelled(ui, "Size", "The head's size against the usual portrait framing", size);
        let [right, down] = &mut pose.offset;
        let shift = |value| egui::DragValue::new(value).range(-LIMITS.offset..=LIMITS.offset).speed(0.002).fixed_decimals(2);
        labelled(ui, "Right", "Where the head sits: a fraction of the image side to the right", shift(right));
        ui.end_row();
        ui.label("");
        ui.label("");
        labelled(ui, "Down", "Where the head sits: a fraction of the image side down", shift(down));
        ui.end_row();
    });
}

/// A grid cell's label and its field, named by the label (for screen readers too).
fn labelled(ui: &mut Ui, label: &str, hint: &str, field: egui::DragValue<'_>) {
    let label = ui.label(label).on_hover_text(hint);
    ui.add(field).labelled_by(label.id).on_hover_text(hint);
}

fn pose_buttons(ui: &mut Ui, state: &AppState, pose: &mut HeadPose, actions: &mut Vec<Action>) {
    ui.horizontal_wrapped(|ui| {
        ui.menu_button("Presets", |ui| {
            for (name, preset) in PRESETS {
                if ui.button(name).clicked() {
                    *pose = preset;
                    ui.close();
                }
            }
        });
        if ui.button("Reset pose").on_hover_text("Facing the camera, mouth closed, usual framing").clicked() {
            *pose = HeadPose::FRONTAL;
        }
        let has_face = state.photo.as_ref().is_some_and(|p| p.selected_face.is_some());
        if ui
            .add_enabled(has_face, egui::Button::new("From the photo"))
            .on_hover_text("Turn the head as the selected face is turned; or drop any photo on this panel")
            .on_disabled_hover_text("Open a photo with a face, or drop one on this panel")
            .clicked()
        {
            actions.push(PoseAction::FromSelectedFace.into());
        }
        if let Some(path) = &state.pose.fitting {
            ui.spinner();
            ui.label(format!("Reading the pose of {}…", crate::file_name(path)));
        }
    });
    if let Some(head) = &state.pose.head {
        let hint = match head.mesh {
            HeadMesh::Builtin => {
                "Put a FLAME model file at flame/generic_model.pkl in the models folder to use FLAME's head, as the ControlNet was trained on"
            }
            HeadMesh::Flame { .. } => "The FLAME head from the models folder",
        };
        ui.small(format!("Head: {}", head.model.source())).on_hover_text(hint);
    }
}
