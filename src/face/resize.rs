//! Bilinear resampling that matches OpenCV's `INTER_LINEAR` for 8-bit images (half-pixel
//! centres, edge clamping, 11-bit fixed-point weights), so that our detector input equals
//! insightface's to within a level and boxes match.

use image::RgbImage;

const COEF_BITS: u32 = 11;
const COEF_SCALE: i32 = 1 << COEF_BITS;

/// For each destination coordinate: the two source indices and their fixed-point weights.
fn taps(src_len: usize, dst_len: usize) -> Vec<(usize, usize, i32, i32)> {
    let scale = src_len as f64 / dst_len as f64;
    (0..dst_len)
        .map(|d| {
            let f = (d as f64 + 0.5) * scale - 0.5;
            let mut s = f.floor() as i64;
            let mut frac = (f - s as f64) as f32;
            if s < 0 {
                s = 0;
                frac = 0.0;
            }
            if s >= src_len as i64 - 1 {
                s = src_len as i64 - 1;
                frac = 0.0;
            }
            let w0 = ((1.0 - frac) * COEF_SCALE as f32).round() as i32;
            let s = s as usize;
            (s, (s + 1).min(src_len - 1), w0, COEF_SCALE - w0)
        })
        .collect()
}

/// Resizes to `width`×`height`.
pub fn bilinear(image: &RgbImage, width: usize, height: usize) -> RgbImage {
    if (image.width() as usize, image.height() as usize) == (width, height) {
        return image.clone();
    }
    let xs = taps(image.width() as usize, width);
    let ys = taps(image.height() as usize, height);
    let src = image.as_raw();
    let row_len = image.width() as usize * 3;
    // Horizontal pass into fixed-point rows, then vertical, as OpenCV does.
    let horizontal = |row: usize| -> Vec<i32> {
        let line = &src[row * row_len..(row + 1) * row_len];
        xs.iter().flat_map(|&(x0, x1, w0, w1)| (0..3).map(move |c| line[x0 * 3 + c] as i32 * w0 + line[x1 * 3 + c] as i32 * w1)).collect()
    };
    let mut out = Vec::with_capacity(width * height * 3);
    for &(y0, y1, w0, w1) in &ys {
        let (top, bottom) = (horizontal(y0), horizontal(y1));
        let round = 1i64 << (2 * COEF_BITS - 1);
        out.extend(
            top.iter()
                .zip(&bottom)
                .map(|(&t, &b)| ((t as i64 * w0 as i64 + b as i64 * w1 as i64 + round) >> (2 * COEF_BITS)).clamp(0, 255) as u8),
        );
    }
    #[allow(clippy::expect_used, reason = "one RGB triple per output pixel was pushed above")]
    RgbImage::from_raw(width as u32, height as u32, out).expect("buffer sized to the image")
}
