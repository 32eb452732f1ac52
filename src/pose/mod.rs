//! Head pose for the pose ControlNet: a head mesh (the built-in ICT-FaceKit head or a FLAME model
//! file), rendered as a surface-normal map the way the ControlNet's training images were made,
//! and a pose fitted to a face's five detector keypoints.
//!
//! # Conventions
//!
//! - **Head frame** (both meshes): metres; +x = image right when the face looks at the camera
//!   (the head's own left), +y up, +z out of the face toward the camera; origin at the midpoint
//!   of the two eyeball centres (built-in head: the eyeball spheres' centres the file is centred
//!   on; FLAME: the means of the eyeball vertices, re-centred so on loading). This is not the
//!   eye landmarks' midpoint: on the built-in head that lies 13.6 mm in front and 1.6 mm lower.
//! - **Eye landmarks**: built-in head: the mean of each eye's six eyelid-outline vertices as
//!   posed (what FFHQ's alignment used, the mean of the eye-contour landmarks, and what SCRFD's
//!   eye keypoints approximate); FLAME: the mean of each eyeball's vertices, i.e. its centre,
//!   because the file has no eyelid landmarks.
//! - **Rotation**: yaw > 0 turns the nose toward image right, pitch > 0 looks up, roll > 0 tilts
//!   the head counter-clockwise in the image. The 3-D rotation rendered is
//!   R = R_y(yaw) · R_x(−pitch): pitch in the head's own frame, then yaw about the vertical.
//! - **Roll is not rendered in 3-D.** The ControlNet was trained on FFHQ-aligned faces, whose
//!   alignment removes roll; the conditioning is rendered at roll 0 and the finished image is
//!   turned by roll with [`rotate_image`].
//! - **Jaw**: 0 closed … 1 fully open. ICT head: vertices + jaw · `jaw_open`; FLAME: the jaw joint
//!   turned about +x by jaw · [`FLAME_JAW_MAX_RAD`] through linear blend skinning.
//! - **Framing**: FFHQ's alignment rule on the projected eye landmarks and mouth corners (see
//!   [`render::view`]), then the user's scale (> 1: head bigger) and offset (fraction of the image
//!   side, +x right, +y down).
//! - **Normal map** (the training style): orthographic camera looking down −z, z-buffer, per-vertex
//!   area-weighted normals of the posed mesh interpolated without renormalising, colour
//!   round((n · 0.5 + 0.5) · 255) with n in camera axes (x right, y up, z toward the camera) as
//!   R, G, B, background exactly (127, 127, 127), back faces drawn, no lighting or anti-aliasing.

pub mod fit;
pub mod flame;
pub mod head;
pub mod pickle;
pub mod render;

use image::RgbImage;
use serde::{Deserialize, Serialize};

pub use fit::fit_pose;
pub use head::{FlameLandmarks, HeadModel, Outline, PosedHead, flame_landmarks};
pub use render::{View, landmarks_2d, render_normals, render_normals_rolled, render_posed, view};

/// The jaw joint's rotation about +x at jaw = 1 on a FLAME model, in radians (public FLAME code
/// samples useful openings up to about 0.5 rad).
pub const FLAME_JAW_MAX_RAD: f64 = 0.35;

/// A head pose as the user sets it and the engine renders it.
///
/// Angles in degrees; omitted keys in JSON take the frontal defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeadPose {
    /// Turn about the vertical axis; > 0 turns the nose toward image right.
    pub yaw: f64,
    /// Nod; > 0 looks up.
    pub pitch: f64,
    /// In-image tilt; > 0 counter-clockwise. Applied to the finished image, not to the 3-D render.
    pub roll: f64,
    /// Mouth opening: 0 closed … 1 fully open.
    pub jaw: f64,
    /// Head size relative to FFHQ framing; > 1 makes the head bigger.
    pub scale: f64,
    /// Head position as a fraction of the image side, +x right, +y down.
    pub offset: [f64; 2],
}

impl HeadPose {
    /// Looking straight at the camera, mouth closed, FFHQ framing.
    pub const FRONTAL: HeadPose = HeadPose { yaw: 0.0, pitch: 0.0, roll: 0.0, jaw: 0.0, scale: 1.0, offset: [0.0, 0.0] };

    /// The pose with every value brought within [`LIMITS`]; a value that is not a number takes
    /// its frontal default.
    pub fn clamped(self) -> Self {
        let clamp = |value: f64, (lo, hi): (f64, f64), default: f64| if value.is_finite() { value.clamp(lo, hi) } else { default };
        let l = &LIMITS;
        HeadPose {
            yaw: clamp(self.yaw, (-l.yaw, l.yaw), 0.0),
            pitch: clamp(self.pitch, (-l.pitch, l.pitch), 0.0),
            roll: clamp(self.roll, (-l.roll, l.roll), 0.0),
            jaw: clamp(self.jaw, l.jaw, 0.0),
            scale: clamp(self.scale, l.scale, 1.0),
            offset: self.offset.map(|o| clamp(o, (-l.offset, l.offset), 0.0)),
        }
    }

    /// An error naming the first value outside [`LIMITS`] (or not a number), for poses typed
    /// in by a user; the GUI's widgets keep within them.
    pub fn check(&self) -> Result<(), String> {
        let l = &LIMITS;
        let values = [
            ("yaw", self.yaw, (-l.yaw, l.yaw)),
            ("pitch", self.pitch, (-l.pitch, l.pitch)),
            ("roll", self.roll, (-l.roll, l.roll)),
            ("jaw", self.jaw, l.jaw),
            ("scale", self.scale, l.scale),
            ("offset x", self.offset[0], (-l.offset, l.offset)),
            ("offset y", self.offset[1], (-l.offset, l.offset)),
        ];
        match values.into_iter().find(|(_, value, (lo, hi))| !(lo <= value && value <= hi)) {
            Some((name, value, (lo, hi))) => Err(format!("{name} {value} is outside {lo} … {hi}")),
            None => Ok(()),
        }
    }

    /// The pose a fraction `t` of the way from `self` to `other`, value by value (for sweeps;
    /// t = 0 gives `self`, t = 1 gives `other`).
    pub fn lerp(&self, other: &HeadPose, t: f64) -> HeadPose {
        let mix = |a: f64, b: f64| a + (b - a) * t;
        HeadPose {
            yaw: mix(self.yaw, other.yaw),
            pitch: mix(self.pitch, other.pitch),
            roll: mix(self.roll, other.roll),
            jaw: mix(self.jaw, other.jaw),
            scale: mix(self.scale, other.scale),
            offset: [mix(self.offset[0], other.offset[0]), mix(self.offset[1], other.offset[1])],
        }
    }
}

impl Default for HeadPose {
    fn default() -> Self {
        HeadPose::FRONTAL
    }
}

/// How far each pose value may go: the frontal hemisphere FFHQ covers (beyond these angles the
/// ControlNet has seen too few faces to follow the conditioning).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoseLimits {
    /// |yaw| at most this many degrees.
    pub yaw: f64,
    /// |pitch| at most this many degrees.
    pub pitch: f64,
    /// |roll| at most this many degrees.
    pub roll: f64,
    /// Jaw opening range.
    pub jaw: (f64, f64),
    /// Scale range.
    pub scale: (f64, f64),
    /// |offset| at most this fraction of the image side, each axis.
    pub offset: f64,
}

/// The pose limits: yaw ±60°, pitch ±30°, roll ±20°, jaw 0…1, scale 0.7…1.4, offset ±0.2 each.
pub const LIMITS: PoseLimits = PoseLimits { yaw: 60.0, pitch: 30.0, roll: 20.0, jaw: (0.0, 1.0), scale: (0.7, 1.4), offset: 0.2 };

/// Named poses for the pose menu.
pub const PRESETS: [(&str, HeadPose); 9] = [
    ("Frontal", HeadPose::FRONTAL),
    ("Three-quarter left", HeadPose { yaw: -35.0, ..HeadPose::FRONTAL }),
    ("Three-quarter right", HeadPose { yaw: 35.0, ..HeadPose::FRONTAL }),
    ("Profile left", HeadPose { yaw: -60.0, ..HeadPose::FRONTAL }),
    ("Profile right", HeadPose { yaw: 60.0, ..HeadPose::FRONTAL }),
    ("Looking up", HeadPose { pitch: 20.0, ..HeadPose::FRONTAL }),
    ("Looking down", HeadPose { pitch: -20.0, ..HeadPose::FRONTAL }),
    ("Head tilted", HeadPose { roll: 15.0, ..HeadPose::FRONTAL }),
    ("Mouth open", HeadPose { jaw: 0.8, ..HeadPose::FRONTAL }),
];

/// How much [`rotate_image`] magnifies a `width`×`height` image turned by `roll_degrees` so that
/// the turned image still covers the whole frame: |cos| + |sin| for a square (the frame then
/// shows the central 1/(|cos| + |sin|) of the side).
fn rotation_zoom(width: f64, height: f64, roll_degrees: f64) -> f64 {
    let (sin, cos) = roll_degrees.to_radians().sin_cos();
    let (sin, cos) = (sin.abs(), cos.abs());
    ((width * cos + height * sin) / width).max((width * sin + height * cos) / height)
}

/// Where [`rotate_image`] moves the point `p` (pixels, y down, pixel centres at +0.5) of a
/// `width`×`height` image: turned counter-clockwise by `roll_degrees` about the centre and
/// magnified as that function does. For drawing landmarks on a rolled image.
pub fn rotate_image_point(p: [f32; 2], roll_degrees: f64, width: u32, height: u32) -> [f32; 2] {
    let (w, h) = (width as f64, height as f64);
    let zoom = rotation_zoom(w, h, roll_degrees);
    let (sin, cos) = roll_degrees.to_radians().sin_cos();
    let (dx, dy) = (p[0] as f64 - w / 2.0, p[1] as f64 - h / 2.0);
    // Counter-clockwise on screen is clockwise in y-down coordinates: rotation by −roll.
    [(w / 2.0 + zoom * (cos * dx + sin * dy)) as f32, (h / 2.0 + zoom * (-sin * dx + cos * dy)) as f32]
}

/// Where the point `p` of the turned image comes from in the original: the inverse of
/// [`rotate_image_point`]. For drawing an image turned by a graphics card as
/// [`rotate_image`] turns it.
pub fn unrotate_image_point(p: [f32; 2], roll_degrees: f64, width: u32, height: u32) -> [f32; 2] {
    Unrotation::new(roll_degrees, width, height).source([p[0] as f64, p[1] as f64]).map(|c| c as f32)
}

/// The map from a turned image's points back to the original's.
struct Unrotation {
    centre: [f64; 2],
    zoom: f64,
    sin: f64,
    cos: f64,
}

impl Unrotation {
    fn new(roll_degrees: f64, width: u32, height: u32) -> Self {
        let (w, h) = (width as f64, height as f64);
        let (sin, cos) = roll_degrees.to_radians().sin_cos();
        Self { centre: [w / 2.0, h / 2.0], zoom: rotation_zoom(w, h, roll_degrees), sin, cos }
    }

    fn source(&self, p: [f64; 2]) -> [f64; 2] {
        let (dx, dy) = ((p[0] - self.centre[0]) / self.zoom, (p[1] - self.centre[1]) / self.zoom);
        [self.centre[0] + self.cos * dx - self.sin * dy, self.centre[1] + self.sin * dx + self.cos * dy]
    }
}

/// `image` turned counter-clockwise by `roll_degrees` about its centre, magnified just enough that
/// no empty corner shows (the turned image covers the whole frame), sampled bilinearly. Roll 0
/// returns the image unchanged; the result has the input's size.
pub fn rotate_image(image: &RgbImage, roll_degrees: f64) -> RgbImage {
    if roll_degrees == 0.0 || !roll_degrees.is_finite() || image.width() == 0 || image.height() == 0 {
        return image.clone();
    }
    let (width, height) = image.dimensions();
    let (max_x, max_y) = (width as i64 - 1, height as i64 - 1);
    let pixel = |x: i64, y: i64| image.get_pixel(x.clamp(0, max_x) as u32, y.clamp(0, max_y) as u32).0;
    let unrotation = Unrotation::new(roll_degrees, width, height);
    RgbImage::from_fn(width, height, |x, y| {
        // From this pixel's centre to the source's pixel grid.
        let [sx, sy] = unrotation.source([x as f64 + 0.5, y as f64 + 0.5]);
        let (sx, sy) = (sx - 0.5, sy - 0.5);
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = (sx - x0, sy - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        let (p00, p10, p01, p11) = (pixel(x0, y0), pixel(x0 + 1, y0), pixel(x0, y0 + 1), pixel(x0 + 1, y0 + 1));
        image::Rgb(std::array::from_fn(|c| {
            let top = p00[c] as f64 * (1.0 - fx) + p10[c] as f64 * fx;
            let bottom = p01[c] as f64 * (1.0 - fx) + p11[c] as f64 * fx;
            (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8
        }))
    })
}
