//! Five-point alignment to the 112×112 ArcFace template: the least-squares similarity transform
//! (rotation, uniform scale, translation; no reflection — Umeyama's estimate, which insightface
//! takes from scikit-image) and a bilinear warp with a black border.

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

/// The 112×112 crop `matrix` maps the photo onto, sampled bilinearly; outside the photo is black.
pub fn warp_affine(photo: &RgbImage, matrix: &[[f64; 3]; 2]) -> RgbImage {
    let [[a, b, tx], [c, d, ty]] = *matrix;
    let det = a * d - b * c;
    // The inverse map: crop pixel → photo point.
    let inverse = [[d / det, -b / det], [-c / det, a / det]];
    let (w, h) = (photo.width() as i64, photo.height() as i64);
    let pixel = |x: i64, y: i64, ch: usize| -> f64 {
        if x < 0 || y < 0 || x >= w || y >= h { 0.0 } else { photo.get_pixel(x as u32, y as u32)[ch] as f64 }
    };
    RgbImage::from_fn(ALIGNED_SIZE, ALIGNED_SIZE, |x, y| {
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
