//! A head pose from a face's five detector keypoints (SCRFD order: image-left eye, image-right
//! eye, nose tip, image-left and image-right mouth corner), so "the pose of this photo" can be
//! carried over to generated images.
//!
//! Model: scaled orthographic projection of the head's own five points (eye landmarks, nose tip,
//! mouth corners) — p = s · Rot(roll) · Π(R_y(yaw) · R_x(−pitch) · P) + t, where Π also applies
//! the FFHQ crop the renderer applies (so roll is measured from FFHQ alignment, exactly as the
//! engine applies it to the finished image). For given yaw and pitch the best scale, roll and
//! shift have a closed form (2-D Procrustes), so Levenberg–Marquardt runs on yaw and pitch
//! alone, from the best few points of a coarse grid.

use super::render::framed_view;
use super::{HeadModel, HeadPose};

/// How far the search goes beyond the pose limits (the result is clamped to them afterwards),
/// so a face turned past the limits fits near the limit rather than at a wrong local minimum.
const SEARCH_YAW: f64 = 85.0;
const SEARCH_PITCH: f64 = 60.0;

/// The pose of the face whose five keypoints (photo pixels) are `keypoints`: yaw, pitch and
/// roll clamped to [`super::LIMITS`]; jaw 0, scale 1, offset 0 (generated images are always
/// FFHQ-framed). Keypoints that are not finite or all in one place give the frontal pose.
pub fn fit_pose(head: &HeadModel, keypoints: &[[f32; 2]; 5]) -> HeadPose {
    let landmarks = head.posed(0.0, &[]).landmarks;
    let target = keypoints.map(|p| [p[0] as f64, p[1] as f64]);
    let Some(target) = Centred::new(&target) else {
        return HeadPose::FRONTAL;
    };
    let evaluate = |yaw: f64, pitch: f64| -> Fit {
        let view = framed_view(&landmarks, yaw, pitch, 1.0, [0.0, 0.0], 512);
        let model = landmarks.map(|p| {
            let q = view.project(p);
            [q[0] as f64, q[1] as f64]
        });
        procrustes(&model, &target)
    };

    // Coarse grid, then Levenberg–Marquardt from the best few distinct starts.
    let mut starts: Vec<(f64, f64, f64)> = Vec::new();
    for yi in -8..=8 {
        for pi in -5..=5 {
            let (yaw, pitch) = (yi as f64 * 10.0, pi as f64 * 10.0);
            starts.push((evaluate(yaw, pitch).cost(), yaw, pitch));
        }
    }
    starts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut best: Option<(f64, f64, f64, f64)> = None; // cost, yaw, pitch, roll
    for &(_, yaw, pitch) in starts.iter().take(4) {
        let (yaw, pitch) = refine(&evaluate, yaw, pitch);
        let fit = evaluate(yaw, pitch);
        if best.is_none_or(|b| fit.cost() < b.0) {
            best = Some((fit.cost(), yaw, pitch, fit.roll));
        }
    }
    let Some((_, yaw, pitch, roll)) = best else {
        return HeadPose::FRONTAL;
    };
    HeadPose { yaw, pitch, roll, ..HeadPose::FRONTAL }.clamped()
}

/// Levenberg–Marquardt on (yaw, pitch) with central-difference derivatives.
fn refine(evaluate: &impl Fn(f64, f64) -> Fit, mut yaw: f64, mut pitch: f64) -> (f64, f64) {
    const STEP: f64 = 1e-3; // degrees, for derivatives
    let mut lambda = 1e-3;
    let mut current = evaluate(yaw, pitch);
    for _ in 0..60 {
        let dy = derivative(|h| evaluate(yaw + h, pitch).residuals, STEP);
        let dp = derivative(|h| evaluate(yaw, pitch + h).residuals, STEP);
        let r = current.residuals;
        let dot = |a: &[f64; 10], b: &[f64; 10]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let (a, b, c) = (dot(&dy, &dy), dot(&dy, &dp), dot(&dp, &dp));
        let (gy, gp) = (dot(&dy, &r), dot(&dp, &r));
        let mut improved = false;
        for _ in 0..12 {
            let (a, c) = (a * (1.0 + lambda), c * (1.0 + lambda));
            let det = a * c - b * b;
            if det.abs() < 1e-300 {
                lambda *= 10.0;
                continue;
            }
            let step_yaw = -(c * gy - b * gp) / det;
            let step_pitch = -(a * gp - b * gy) / det;
            let (new_yaw, new_pitch) =
                ((yaw + step_yaw).clamp(-SEARCH_YAW, SEARCH_YAW), (pitch + step_pitch).clamp(-SEARCH_PITCH, SEARCH_PITCH));
            let candidate = evaluate(new_yaw, new_pitch);
            if candidate.cost() < current.cost() {
                let small = (new_yaw - yaw).abs() + (new_pitch - pitch).abs() < 1e-6;
                (yaw, pitch, current) = (new_yaw, new_pitch, candidate);
                lambda = (lambda * 0.3).max(1e-9);
                improved = !small;
                break;
            }
            lambda *= 10.0;
        }
        if !improved {
            break;
        }
    }
    (yaw, pitch)
}

fn derivative(f: impl Fn(f64) -> [f64; 10], h: f64) -> [f64; 10] {
    let (plus, minus) = (f(h), f(-h));
    std::array::from_fn(|i| (plus[i] - minus[i]) / (2.0 * h))
}

/// Points with their mean removed, and their spread.
struct Centred {
    points: [[f64; 2]; 5],
    norm: f64,
}

impl Centred {
    fn new(points: &[[f64; 2]; 5]) -> Option<Centred> {
        if points.iter().flatten().any(|c| !c.is_finite()) {
            return None;
        }
        let mean = [points.iter().map(|p| p[0]).sum::<f64>() / 5.0, points.iter().map(|p| p[1]).sum::<f64>() / 5.0];
        let points = points.map(|p| [p[0] - mean[0], p[1] - mean[1]]);
        let norm = points.iter().map(|p| p[0] * p[0] + p[1] * p[1]).sum::<f64>().sqrt();
        (norm > 1e-9).then_some(Centred { points, norm })
    }
}

/// The best similarity from model points onto the target: the residuals (relative to the
/// target's spread) and the roll it implies.
struct Fit {
    residuals: [f64; 10],
    /// Degrees, counter-clockwise on screen.
    roll: f64,
}

impl Fit {
    fn cost(&self) -> f64 {
        self.residuals.iter().map(|r| r * r).sum()
    }
}

fn procrustes(model: &[[f64; 2]; 5], target: &Centred) -> Fit {
    let Some(model) = Centred::new(model) else {
        return Fit { residuals: [1.0; 10], roll: 0.0 };
    };
    let (mut dot, mut cross) = (0.0, 0.0);
    for (q, p) in model.points.iter().zip(&target.points) {
        dot += q[0] * p[0] + q[1] * p[1];
        cross += q[0] * p[1] - q[1] * p[0];
    }
    // p ≈ s · Rot(φ) · q in image axes (y down), φ = atan2(Σ q×p, Σ q·p): clockwise on screen.
    let angle = cross.atan2(dot);
    let scale = dot.hypot(cross) / (model.norm * model.norm);
    let (sin, cos) = angle.sin_cos();
    let mut residuals = [0.0; 10];
    for (i, (q, p)) in model.points.iter().zip(&target.points).enumerate() {
        residuals[2 * i] = (p[0] - scale * (cos * q[0] - sin * q[1])) / target.norm;
        residuals[2 * i + 1] = (p[1] - scale * (sin * q[0] + cos * q[1])) / target.norm;
    }
    Fit { residuals, roll: -angle.to_degrees() }
}
