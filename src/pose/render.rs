//! The pose ControlNet's conditioning image: a head mesh rendered as a surface-normal map in the
//! style of its training data (see the module docs of [`crate::pose`]), framed as FFHQ frames
//! faces.

use image::RgbImage;

use super::head::{HeadModel, PosedHead};
use super::{HeadPose, rotate_image};
use crate::face::align::FfhqSquare;

/// The background of a normal map: exactly mid-grey, as in the training images.
pub const BACKGROUND: [u8; 3] = [127, 127, 127];

/// The map from the head frame to image pixels for one pose and image size: the 3-D rotation
/// (R = R_y(yaw) · R_x(−pitch), then the FFHQ crop's small in-plane turn), an orthographic
/// projection, and the crop's scale and shift (FFHQ framing, the user's scale and offset).
/// Roll is not part of it (see [`rotate_image`]).
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Head frame → camera frame (x right, y up, z toward the camera).
    rotation: [[f64; 3]; 3],
    /// Pixels per metre.
    scale: f64,
    /// Pixel position of the camera frame's origin (x right, y down).
    shift: [f64; 2],
    size: usize,
}

impl View {
    /// The pixel position (x right, y down; pixel centres at +0.5) of the head-frame point `p`.
    pub fn project(&self, p: [f32; 3]) -> [f32; 2] {
        let [x, y, _] = self.camera(p);
        [(self.scale * x + self.shift[0]) as f32, (self.shift[1] - self.scale * y) as f32]
    }

    /// `p` in the camera frame (metres; z grows toward the camera).
    pub fn camera(&self, p: [f32; 3]) -> [f64; 3] {
        let p = p.map(|c| c as f64);
        self.rotation.map(|row| row[0] * p[0] + row[1] * p[1] + row[2] * p[2])
    }

    /// The rotation from the head frame to the camera frame (rows are the camera axes).
    pub fn rotation(&self) -> [[f64; 3]; 3] {
        self.rotation
    }

    /// Image pixels per metre of the head.
    pub fn pixels_per_metre(&self) -> f64 {
        self.scale
    }

    /// The side of the square image this view is for.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// R = R_y(yaw) · R_x(−pitch), angles in degrees.
pub fn head_rotation(yaw: f64, pitch: f64) -> [[f64; 3]; 3] {
    let (sy, cy) = yaw.to_radians().sin_cos();
    let (sp, cp) = (-pitch).to_radians().sin_cos();
    // R_y(yaw) = [[cy, 0, sy], [0, 1, 0], [−sy, 0, cy]]; R_x(a) = [[1, 0, 0], [0, ca, −sa], [0, sa, ca]].
    [[cy, sy * sp, sy * cp], [0.0, cp, -sp], [-sy, cy * sp, cy * cp]]
}

/// The view of `head` for `pose` in a `size`×`size` image (roll ignored).
///
/// FFHQ framing ([`crate::face::align::ffhq_square`]), applied to the projected eye and mouth
/// points after rotation (image coordinates, y down): the square maps onto the image (a
/// similarity: it turns slightly when its x axis is not horizontal). The user's scale divides the half side; the offset moves the crop centre by
/// −offset · side along the crop's axes, so the head moves by +offset of the image side.
///
/// The eyes are the head's eye landmarks (see the module docs of [`crate::pose`]). On the
/// built-in head they are eyelid means, as FFHQ took the mean of dlib's six eyelid points; the
/// crop still turns a little for a turned head, as FFHQ's does, because the mouth corners lie
/// about 1 cm in front of the eyelids (the eye line tilts 2.2–2.3° at yaw ±30°, 4.7–4.9° at
/// ±60°). A FLAME head's eyes are its eyeball centres, about an eyeball radius further back, so
/// its crop turns more (the built-in head with its eyeball centres tilted 5.4° and 11.3°).
pub fn view(head: &PosedHead, pose: &HeadPose, size: usize) -> View {
    framed_view(&head.landmarks, pose.yaw, pose.pitch, pose.scale, pose.offset, size)
}

pub(crate) fn framed_view(landmarks: &[[f32; 3]; 5], yaw: f64, pitch: f64, scale: f64, offset: [f64; 2], size: usize) -> View {
    let r = head_rotation(yaw, pitch);
    // Orthographic projection into image axes (y down), metres.
    let q: [[f64; 2]; 5] = landmarks.map(|p| {
        let p = p.map(|c| c as f64);
        [r[0][0] * p[0] + r[0][1] * p[1] + r[0][2] * p[2], -(r[1][0] * p[0] + r[1][1] * p[1] + r[1][2] * p[2])]
    });
    // A degenerate mesh (all points in one place) is framed as a 20 cm square around them.
    let square =
        crate::face::align::ffhq_square([q[0], q[1]], [q[3], q[4]]).unwrap_or(FfhqSquare { centre: q[0], axis: [1.0, 0.0], half: 0.1 });
    let FfhqSquare { axis, mut half, .. } = square;
    let scale = if scale.is_finite() && scale > 0.0 { scale } else { 1.0 };
    half /= scale;
    let down = [-axis[1], axis[0]];
    let side = 2.0 * half;
    let offset = offset.map(|o| if o.is_finite() { o } else { 0.0 });
    let centre = [
        square.centre[0] - (offset[0] * axis[0] + offset[1] * down[0]) * side,
        square.centre[1] - (offset[0] * axis[1] + offset[1] * down[1]) * side,
    ];
    // The crop's x axis makes angle θ with the image's (y down); turning the camera frame (y up)
    // by +θ about z brings it onto the image's x axis.
    let (sin, cos) = (axis[1], axis[0]);
    let turn = [[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]];
    let rotation: [[f64; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| turn[i][k] * r[k][j]).sum()));
    let pixels = size as f64 / side;
    // The centre (image axes) in the turned camera frame (y up) lands on the image centre.
    let (cx, cy) = (centre[0], -centre[1]);
    let (wx, wy) = (cos * cx - sin * cy, sin * cx + cos * cy);
    let middle = size as f64 / 2.0;
    View { rotation, scale: pixels, shift: [middle - pixels * wx, middle + pixels * wy], size }
}

/// The five landmarks of `head` (eye landmarks, nose tip, mouth corners) in image pixels.
pub fn landmarks_2d(head: &PosedHead, view: &View) -> [[f32; 2]; 5] {
    head.landmarks.map(|p| view.project(p))
}

/// The conditioning image for `pose`: `head` posed (jaw) and rendered as a `size`×`size` normal
/// map at roll 0 (the engine turns the finished image by roll).
pub fn render_normals(head: &HeadModel, pose: &HeadPose, size: usize) -> RgbImage {
    let posed = head.posed(pose.jaw, &[]);
    render_posed(&posed, &view(&posed, pose, size))
}

/// [`render_normals`] turned by the pose's roll as the finished image will be: for previews.
pub fn render_normals_rolled(head: &HeadModel, pose: &HeadPose, size: usize) -> RgbImage {
    rotate_image(&render_normals(head, pose, size), pose.roll)
}

/// A posed mesh rendered as a normal map through `view`: orthographic, z-buffered (nearer wins;
/// on a tie the earlier triangle stays), interpolated vertex normals in camera axes (not
/// renormalised), back faces drawn, one sample at each pixel centre.
pub fn render_posed(head: &PosedHead, view: &View) -> RgbImage {
    let size = view.size;
    let mut pixels = BACKGROUND.repeat(size * size);
    let mut depth = vec![f64::NEG_INFINITY; size * size];
    // Screen position and depth per vertex, and camera-frame normals.
    let screen: Vec<[f64; 3]> = head
        .vertices
        .iter()
        .map(|&p| {
            let [x, y, z] = view.camera(p);
            [view.scale * x + view.shift[0], view.shift[1] - view.scale * y, z]
        })
        .collect();
    let normals: Vec<[f32; 3]> = head
        .normals
        .iter()
        .map(|n| {
            let n = n.map(|c| c as f64);
            view.rotation.map(|row| (row[0] * n[0] + row[1] * n[1] + row[2] * n[2]) as f32)
        })
        .collect();
    let last = size as f64 - 1.0;
    for tri in head.triangles.iter() {
        let ids = tri.map(|i| i as usize);
        let [p0, p1, p2] = ids.map(|i| screen[i]);
        let area = (p1[0] - p0[0]) * (p2[1] - p0[1]) - (p1[1] - p0[1]) * (p2[0] - p0[0]);
        if area == 0.0 || !area.is_finite() {
            continue; // seen edge-on: covers no pixel centre
        }
        // Pixel columns/rows whose centres (i + 0.5) lie within the bounding box.
        let x0 = (p0[0].min(p1[0]).min(p2[0]) - 0.5).ceil().max(0.0);
        let x1 = (p0[0].max(p1[0]).max(p2[0]) - 0.5).floor().min(last);
        let y0 = (p0[1].min(p1[1]).min(p2[1]) - 0.5).ceil().max(0.0);
        let y1 = (p0[1].max(p1[1]).max(p2[1]) - 0.5).floor().min(last);
        if x0 > x1 || y0 > y1 {
            continue;
        }
        // Edge k is opposite vertex k: w_k(p) = a·p_x + b·p_y + c, ≥ 0 inside. Each is computed
        // from the edge's lower-numbered vertex, so two triangles sharing an edge get exactly
        // opposite values there and no pixel centre on it falls through both (no cracks).
        let sign = area.signum();
        let edges = [(ids[1], ids[2]), (ids[2], ids[0]), (ids[0], ids[1])].map(|(a, b)| {
            let (from, to, flip) = if a < b { (a, b, 1.0) } else { (b, a, -1.0) };
            let (pa, pb) = (screen[from], screen[to]);
            // (pb − pa) × (p − pa) = a·p_x + b·p_y + c
            let (ea, eb) = (pa[1] - pb[1], pb[0] - pa[0]);
            let s = flip * sign;
            [s * ea, s * eb, s * -(ea * pa[0] + eb * pa[1])]
        });
        let inv_area = 1.0 / area.abs();
        let z = [p0[2] * inv_area, p1[2] * inv_area, p2[2] * inv_area];
        let n = ids.map(|i| normals[i]);
        for row in y0 as usize..=y1 as usize {
            let py = row as f64 + 0.5;
            let r = edges.map(|[_, b, c]| b * py + c);
            // The row's span from each edge, widened by a pixel: the exact test below decides.
            let (mut from, mut to) = (x0, x1);
            for ([a, _, _], r) in edges.iter().zip(r) {
                if *a > 0.0 {
                    from = from.max((-r / a - 0.5).ceil() - 1.0);
                } else if *a < 0.0 {
                    to = to.min((-r / a - 0.5).floor() + 1.0);
                } else if r < 0.0 {
                    to = -1.0;
                }
            }
            if from > to {
                continue;
            }
            let line = row * size;
            for col in from as usize..=to as usize {
                let px = col as f64 + 0.5;
                let w = [edges[0][0] * px + r[0], edges[1][0] * px + r[1], edges[2][0] * px + r[2]];
                if w[0] < 0.0 || w[1] < 0.0 || w[2] < 0.0 {
                    continue;
                }
                let d = w[0] * z[0] + w[1] * z[1] + w[2] * z[2];
                let index = line + col;
                if d <= depth[index] {
                    continue;
                }
                depth[index] = d;
                let l = w.map(|w| (w * inv_area) as f32);
                for c in 0..3 {
                    let value = l[0] * n[0][c] + l[1] * n[1][c] + l[2] * n[2][c];
                    // round((n · 0.5 + 0.5) · 255) for a non-negative value, without a libm call.
                    pixels[3 * index + c] = (((value * 0.5 + 0.5) * 255.0).clamp(0.0, 255.0) + 0.5) as u8;
                }
            }
        }
    }
    // A buffer of exactly size² RGB pixels always fits.
    RgbImage::from_raw(size as u32, size as u32, pixels).unwrap_or_else(|| RgbImage::new(size as u32, size as u32))
}
