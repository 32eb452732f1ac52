//! What the Pose panel draws: the head in the panel's pose (turned by roll as the finished image
//! will be), the skeleton drawn over it, and the conditioning image the ControlNet will be shown.
//! The app redraws them between frames whenever the pose changes; the panel only paints them.

use std::time::{Duration, Instant};

use egui::{TextureHandle, TextureOptions};
use image::RgbImage;

use super::color_image;
use crate::engine::{HeadMesh, load_head};
use crate::models::ModelsDir;
use crate::pose::{self, HeadModel, HeadPose};

/// The side of the head the panel shows, in pixels (drawn at up to 300 points; sharp enough,
/// and a render of it takes a few milliseconds).
pub const VIEW_SIDE: usize = 320;

/// While the head is being dragged the conditioning image (at the job's size, the slower
/// render) is redrawn at most this often; it catches up when the drag ends.
const CONDITIONING_INTERVAL: Duration = Duration::from_millis(120);

/// A head mesh the panel shows and jobs render.
pub struct Head {
    pub mesh: HeadMesh,
    pub model: HeadModel,
}

/// Loads the head the models folder prefers (its FLAME file, else the built-in head) on a
/// thread of its own: a FLAME pickle is tens of megabytes. A FLAME file that cannot be read
/// leaves the built-in head, with the reason.
pub fn load_preferred_head(models: &ModelsDir, wake: impl Fn() + Send + 'static) -> crossbeam_channel::Receiver<(Head, Option<String>)> {
    let (sender, receiver) = crossbeam_channel::bounded(1);
    let models = models.clone();
    let load = move || {
        let mesh = HeadMesh::preferred(&models);
        let loaded = match load_head(&models, &mesh) {
            Ok(model) => Ok(Head { mesh, model }),
            Err(error) => Err(format!("The FLAME head could not be read, so the built-in head is used: {error}")),
        };
        let result = match loaded {
            Ok(head) => Some((head, None)),
            Err(problem) => HeadModel::builtin().ok().map(|model| (Head { mesh: HeadMesh::Builtin, model }, Some(problem))),
        };
        if let Some(result) = result {
            let _ = sender.send(result);
        }
        wake();
    };
    if std::thread::Builder::new().name("head".into()).spawn(load).is_err() {
        // No thread: the built-in head is quick to make here.
        return built_in_now();
    }
    receiver
}

fn built_in_now() -> crossbeam_channel::Receiver<(Head, Option<String>)> {
    let (sender, receiver) = crossbeam_channel::bounded(1);
    if let Ok(model) = HeadModel::builtin() {
        let _ = sender.send((Head { mesh: HeadMesh::Builtin, model }, None));
    }
    receiver
}

/// The head's skeleton in the view's pixels (x right, y down), turned by roll as the view is.
#[derive(Debug, Clone, PartialEq)]
pub struct Overlay {
    /// Eyes, nose tip, mouth corners.
    pub landmarks: [[f32; 2]; 5],
    /// The landmark outlines (jaw, brows, nose, eyes, lips) where the mesh has them; the flag
    /// says whether a polyline closes.
    pub outlines: Vec<(Vec<[f32; 2]>, bool)>,
    /// The head's origin (between the eyes) and the ends of its x, y and z axes.
    pub origin: [f32; 2],
    pub axes: [[f32; 2]; 3],
    /// The nose tip and a point ahead of it, where the face looks.
    pub nose: [[f32; 2]; 2],
    /// Where the chin handle sits.
    pub chin: [f32; 2],
    /// The view's centre, the roll ring's centre.
    pub centre: [f32; 2],
}

/// The pictures of one pose.
pub struct PoseDrawing {
    pub mesh: HeadMesh,
    /// The pose of the overlay (the view is drawn turned by its roll: see [`VIEW_SIDE`]).
    pub pose: HeadPose,
    /// The head at roll 0, `VIEW_SIDE` pixels; the panel turns it by the roll as it paints it.
    pub view: TextureHandle,
    pub overlay: Overlay,
    /// What the ControlNet is shown for `conditioning_pose` at `job_size` (roll 0: the
    /// finished image is turned instead). It lags the view while the head is dragged.
    pub conditioning: RgbImage,
    pub conditioning_texture: TextureHandle,
    pub conditioning_pose: HeadPose,
    pub job_size: usize,
    conditioning_drawn_at: Instant,
}

/// The skeleton of `head` in `pose` for a `side`-pixel view.
pub fn overlay(head: &HeadModel, pose: &HeadPose, side: usize) -> Overlay {
    let posed = head.posed(pose.jaw, &[]);
    let view = pose::view(&posed, pose, side);
    let roll = |p: [f32; 2]| pose::rotate_image_point(p, pose.roll, side as u32, side as u32);
    let at = |p: [f32; 3]| roll(view.project(p));
    let landmarks = posed.landmarks.map(at);
    let outlines = head
        .outlines()
        .iter()
        .map(|outline| (outline.vertices.iter().map(|&v| at(posed.vertices[v as usize])).collect(), outline.closed))
        .collect();
    // Axes a little longer than the distance between the eyes.
    let eyes = [posed.landmarks[0], posed.landmarks[1]];
    let length = 1.4 * (0..3).map(|c| (eyes[1][c] - eyes[0][c]).powi(2)).sum::<f32>().sqrt();
    let origin3 = std::array::from_fn(|c| (eyes[0][c] + eyes[1][c]) / 2.0);
    let axis = |c: usize| {
        let mut end = origin3;
        end[c] += length;
        at(end)
    };
    // The chin: below the mouth by half the eyes-to-mouth distance.
    let mouth: [f32; 3] = std::array::from_fn(|c| (posed.landmarks[3][c] + posed.landmarks[4][c]) / 2.0);
    let chin3: [f32; 3] = std::array::from_fn(|c| mouth[c] + 0.5 * (mouth[c] - origin3[c]));
    let tip = posed.landmarks[2];
    let ahead = [tip[0], tip[1], tip[2] + 0.6 * length];
    Overlay {
        landmarks,
        outlines,
        origin: at(origin3),
        axes: [axis(0), axis(1), axis(2)],
        nose: [at(tip), at(ahead)],
        chin: at(chin3),
        centre: [side as f32 / 2.0; 2],
    }
}

/// Draws `pose` again when it, the head or the job's size changed since `drawing` (the
/// conditioning image at most every [`CONDITIONING_INTERVAL`] while `dragging`). Neither picture
/// depends on the roll (the view is turned when painted), so a roll alone redraws neither.
pub fn refresh(ctx: &egui::Context, drawing: &mut Option<PoseDrawing>, head: &Head, pose: &HeadPose, job_size: usize, dragging: bool) {
    let pose = pose.clamped();
    let upright = HeadPose { roll: 0.0, ..pose };
    let view_image = || color_image(&pose::render_normals(&head.model, &upright, VIEW_SIDE));
    let drawn = match drawing {
        Some(drawn) if drawn.mesh == head.mesh => drawn,
        _ => {
            let conditioning = pose::render_normals(&head.model, &upright, job_size);
            *drawing = Some(PoseDrawing {
                mesh: head.mesh.clone(),
                pose,
                view: ctx.load_texture("pose-view", view_image(), TextureOptions::LINEAR),
                overlay: overlay(&head.model, &pose, VIEW_SIDE),
                conditioning_texture: ctx.load_texture("pose-conditioning", color_image(&conditioning), TextureOptions::NEAREST),
                conditioning,
                conditioning_pose: upright,
                job_size,
                conditioning_drawn_at: Instant::now(),
            });
            return;
        }
    };
    if drawn.pose != pose {
        let drawn_upright = HeadPose { roll: 0.0, ..drawn.pose };
        if drawn_upright != upright {
            drawn.view.set(view_image(), TextureOptions::LINEAR);
        }
        drawn.overlay = overlay(&head.model, &pose, VIEW_SIDE);
        drawn.pose = pose;
    }
    if drawn.conditioning_pose != upright || drawn.job_size != job_size {
        let waited = drawn.conditioning_drawn_at.elapsed();
        if !dragging || waited >= CONDITIONING_INTERVAL {
            drawn.conditioning = pose::render_normals(&head.model, &upright, job_size);
            drawn.conditioning_texture.set(color_image(&drawn.conditioning), TextureOptions::NEAREST);
            drawn.conditioning_pose = upright;
            drawn.job_size = job_size;
            drawn.conditioning_drawn_at = Instant::now();
        } else {
            ctx.request_repaint_after(CONDITIONING_INTERVAL - waited);
        }
    }
}
