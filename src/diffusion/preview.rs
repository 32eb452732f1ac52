//! Cheap live previews: a linear map from SD1.5's four latent channels to RGB, applied to the
//! predicted clean latents at each step (RECIPE.md, "Sampling"). Far cheaper than a VAE decode, and good
//! enough to watch an image form.

use candle_core::{DType, Result, Tensor};
use image::RgbImage;

/// Per latent channel, its contribution to (R, G, B): the widely used least-squares fit for the
/// SD1.x VAE, which maps scaled latents to roughly [−1, 1].
const LATENT_TO_RGB: [[f32; 3]; 4] =
    [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.0710, -0.3823]];

/// An RGB preview, one pixel per latent pixel, of the first image of `latents` `(B, C, h, w)`.
/// Latents without four channels are shown as the grey level of their channel mean.
pub fn latents_to_rgb(latents: &Tensor) -> Result<RgbImage> {
    let latent = latents.get(0)?.to_dtype(DType::F32)?;
    let (channels, height, width) = latent.dims3()?;
    let values = latent.flatten_all()?.to_vec1::<f32>()?;
    let plane = height * width;
    let mut pixels = Vec::with_capacity(plane * 3);
    for p in 0..plane {
        let rgb = if channels == 4 {
            let mut rgb = [0f32; 3];
            for (c, weights) in LATENT_TO_RGB.iter().enumerate() {
                for (out, w) in rgb.iter_mut().zip(weights) {
                    *out += values[c * plane + p] * w;
                }
            }
            rgb
        } else {
            let mean = (0..channels).map(|c| values[c * plane + p]).sum::<f32>() / channels as f32;
            [mean; 3]
        };
        pixels.extend(rgb.map(|v| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8));
    }
    #[allow(clippy::expect_used, reason = "the buffer was filled to the image's size above")]
    Ok(RgbImage::from_raw(width as u32, height as u32, pixels).expect("buffer sized to the image"))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    #[test]
    fn zero_latents_are_mid_grey_and_channels_map_through_the_table() {
        let zeros = Tensor::zeros((1, 4, 2, 3), DType::F32, &Device::Cpu).unwrap();
        let preview = latents_to_rgb(&zeros).unwrap();
        assert_eq!((preview.width(), preview.height()), (3, 2));
        assert!(preview.pixels().all(|p| p.0 == [128, 128, 128]));

        // Channel 0 at +1 everywhere: RGB = (1 + factors)/2 · 255.
        let mut values = vec![0f32; 4 * 6];
        values[..6].fill(1.0);
        let latents = Tensor::from_vec(values, (1, 4, 2, 3), &Device::Cpu).unwrap();
        let expected = LATENT_TO_RGB[0].map(|f| (((f + 1.0) / 2.0) * 255.0).round() as u8);
        assert!(latents_to_rgb(&latents).unwrap().pixels().all(|p| p.0 == expected));
    }
}
