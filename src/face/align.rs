//! Face crops from five keypoints: the 112×112 ArcFace crop (the least-squares similarity
//! transform — rotation, uniform scale, translation; no reflection: Umeyama's estimate, which
//! insightface takes from scikit-image) and FFHQ's portrait crop (its alignment rule, which the
//! pose renderer frames its heads by too), both sampled bilinearly.

use image::RgbImage;

/// Where ArcFace expects the eyes, nose tip and mouth corners in its 112×112 input.
pub const ARCFACE_TEMPLATE: [[f64; 2]; 5] =
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];
pub const ALIGNED_SIZE: u32 = 112;

/// The 2×3 matrix mapping photo points onto `template`, best in the least-squares sense.
///
/// In 2-D the optimal rotation has a closed form: with demeaned points x, y, the angle is
/// atan2(Σ x×y, Σ x·y) and the scale √((Σ x·y)² + (Σ x×y)²) / Σ|x|². This equals Umeyama's
/// SVD solution, reflection case included.
pub fn similarity_transform(points: &[[f32; 2]; 5], template: &[[f64; 2]; 5]) -> [[f64; 3]; 2] {
    let n = points.len() as f64;
    let src: Vec<[f64; 2]> = points.iter().map(|p| [p[0] as f64, p[1] as f64]).collect();
    let mean = |pts: &[[f64; 2]]| {
        let (sx, sy) = pts.iter().fold((0.0, 0.0), |(a, b), p| (a + p[0], b + p[1]));
        [sx / n, sy / n]
    };
    let (src_mean, dst_mean) = (mean(&src), mean(template));
    let (mut dot, mut cross, mut src_var) = (0.0, 0.0, 0.0);
    for (s, d) in src.iter().zip(template) {
        let (x, y) = ([s[0] - src_mean[0], s[1] - src_mean[1]], [d[0] - dst_mean[0], d[1] - dst_mean[1]]);
        dot += x[0] * y[0] + x[1] * y[1];
        cross += x[0] * y[1] - x[1] * y[0];
        src_var += x[0] * x[0] + x[1] * x[1];
    }
    let scale = dot.hypot(cross) / src_var;
    let (sin, cos) = cross.atan2(dot).sin_cos();
    let (a, b) = (scale * cos, scale * sin);
    [[a, -b, dst_mean[0] - (a * src_mean[0] - b * src_mean[1])], [b, a, dst_mean[1] - (b * src_mean[0] + a * src_mean[1])]]
}

/// What lies outside the photo in a crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    Black,
    /// The nearest edge pixel, repeated (no black corners in a portrait).
    Replicate,
}

/// The `side`×`side` crop `matrix` maps the photo onto, sampled bilinearly.
pub fn warp_affine(photo: &RgbImage, matrix: &[[f64; 3]; 2], side: u32, border: Border) -> RgbImage {
    let [[a, b, tx], [c, d, ty]] = *matrix;
    let det = a * d - b * c;
    // The inverse map: crop pixel → photo point.
    let inverse = [[d / det, -b / det], [-c / det, a / det]];
    let (w, h) = (photo.width() as i64, photo.height() as i64);
    let pixel = |x: i64, y: i64, ch: usize| -> f64 {
        match border {
            Border::Black if x < 0 || y < 0 || x >= w || y >= h => 0.0,
            _ => photo.get_pixel(x.clamp(0, w - 1) as u32, y.clamp(0, h - 1) as u32)[ch] as f64,
        }
    };
    RgbImage::from_fn(side, side, |x, y| {
        let (u, v) = (x as f64 - tx, y as f64 - ty);
        let sx = inverse[0][0] * u + inverse[0][1] * v;
        let sy = inverse[1][0] * u + inverse[1][1] * v;
        let (x0, y0) = (sx.floor() as i64, sy.floor() as i64);
        let (fx, fy) = (sx - x0 as f64, sy - y0 as f64);
        image::Rgb(std::array::from_fn(|ch| {
            let top = pixel(x0, y0, ch) * (1.0 - fx) + pixel(x0 + 1, y0, ch) * fx;
            let bottom = pixel(x0, y0 + 1, ch) * (1.0 - fx) + pixel(x0 + 1, y0 + 1, ch) * fx;
            (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8
        }))
    })
}

/// The 112×112 ArcFace crop of the face with these keypoints.
pub fn arcface_crop(photo: &RgbImage, keypoints: &[[f32; 2]; 5]) -> RgbImage {
    warp_affine(photo, &similarity_transform(keypoints, &ARCFACE_TEMPLATE), ALIGNED_SIZE, Border::Black)
}

/// The square FFHQ's alignment crops a face to, in image coordinates (y down).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FfhqSquare {
    pub centre: [f64; 2],
    /// The unit vector along the crop's x axis; its y axis is this turned +90° (y down).
    pub axis: [f64; 2],
    /// Half the crop's side.
    pub half: f64,
}

/// FFHQ's rule, from the two eye points (image-left first) and the two mouth corners: with
/// eye_avg = (e_l + e_r)/2, eye_to_eye = e_r − e_l, eye_to_mouth = (m_l + m_r)/2 − eye_avg, the
/// crop's x axis is eye_to_eye − flipud(eye_to_mouth) ⊙ (−1, 1), its half side
/// max(2·|eye_to_eye|, 1.8·|eye_to_mouth|), its centre eye_avg + 0.1·eye_to_mouth. For a frontal
/// face in a 512 crop that puts the eyes near x = 192 and 320, y ≈ 242, the mouth near y ≈ 375.
/// `None` when the points are all in one place.
pub fn ffhq_square(eyes: [[f64; 2]; 2], mouth: [[f64; 2]; 2]) -> Option<FfhqSquare> {
    let eye_avg = [(eyes[0][0] + eyes[1][0]) / 2.0, (eyes[0][1] + eyes[1][1]) / 2.0];
    let eye_to_eye = [eyes[1][0] - eyes[0][0], eyes[1][1] - eyes[0][1]];
    let mouth_avg = [(mouth[0][0] + mouth[1][0]) / 2.0, (mouth[0][1] + mouth[1][1]) / 2.0];
    let eye_to_mouth = [mouth_avg[0] - eye_avg[0], mouth_avg[1] - eye_avg[1]];
    let x = [eye_to_eye[0] + eye_to_mouth[1], eye_to_eye[1] - eye_to_mouth[0]];
    let length = x[0].hypot(x[1]);
    if !(length > 1e-12 && length.is_finite()) {
        return None;
    }
    Some(FfhqSquare {
        centre: [eye_avg[0] + 0.1 * eye_to_mouth[0], eye_avg[1] + 0.1 * eye_to_mouth[1]],
        axis: [x[0] / length, x[1] / length],
        half: (2.0 * eye_to_eye[0].hypot(eye_to_eye[1])).max(1.8 * eye_to_mouth[0].hypot(eye_to_mouth[1])),
    })
}

/// The `side`×`side` FFHQ-aligned portrait of the face with these keypoints (SCRFD order: eyes,
/// nose, mouth corners), edges repeated where the crop leaves the photo. `None` when the
/// keypoints are degenerate.
pub fn ffhq_crop(photo: &RgbImage, keypoints: &[[f32; 2]; 5], side: u32) -> Option<RgbImage> {
    let point = |i: usize| [keypoints[i][0] as f64, keypoints[i][1] as f64];
    let square = ffhq_square([point(0), point(1)], [point(3), point(4)])?;
    // Crop pixel p = (photo point − corner) rotated onto the crop's axes, scaled side / 2·half.
    let scale = side as f64 / (2.0 * square.half);
    let [ax, ay] = square.axis;
    let (down_x, down_y) = (-ay, ax);
    let corner = [square.centre[0] - square.half * (ax + down_x), square.centre[1] - square.half * (ay + down_y)];
    // Photo pixel → crop pixel: rows are the crop's axes, scaled; both with pixel centres at +0.5
    // in continuous coordinates (keypoints are continuous).
    let (a, b, c, d) = (scale * ax, scale * ay, scale * down_x, scale * down_y);
    let shift = |r0: f64, r1: f64| r0 * (0.5 - corner[0]) + r1 * (0.5 - corner[1]) - 0.5;
    let matrix = [[a, b, shift(a, b)], [c, d, shift(c, d)]];
    Some(warp_affine(photo, &matrix, side, Border::Replicate))
}
