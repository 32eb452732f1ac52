//! The SD1.5 VAE decoder: candle-transformers' `AutoEncoderKL`, built from a diffusers
//! `config.json`, plus the mapping from decoded tensors to 8-bit RGB images.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use image::RgbImage;
use serde::Deserialize;

/// The fields of a diffusers `AutoencoderKL` config that the decoder uses.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    #[serde(default = "silu")]
    pub act_fn: String,
}

fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn yes() -> bool {
    true
}
fn default_norm_num_groups() -> usize {
    32
}
fn default_scaling_factor() -> f64 {
    0.18215
}
fn silu() -> String {
    "silu".into()
}

impl VaeConfig {
    /// Says what is wrong when this VAE cannot be built from the config.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.block_out_channels.is_empty() {
            return Err("block_out_channels is empty".into());
        }
        if self.out_channels != 3 {
            return Err(format!("out_channels must be 3 (RGB), got {}", self.out_channels));
        }
        if self.act_fn != "silu" || !self.mid_block_add_attention {
            return Err("only SD-style VAEs (silu, mid-block attention) are supported".into());
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(format!("scaling_factor must be positive, got {}", self.scaling_factor));
        }
        Ok(())
    }

    /// Image pixels per latent pixel: `2^(len(block_out_channels) − 1)`.
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

pub struct Vae {
    model: AutoEncoderKL,
    scaling_factor: f64,
}

impl Vae {
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let model = AutoEncoderKL::new(
            vb,
            config.in_channels,
            config.out_channels,
            AutoEncoderKLConfig {
                block_out_channels: config.block_out_channels.clone(),
                layers_per_block: config.layers_per_block,
                latent_channels: config.latent_channels,
                norm_num_groups: config.norm_num_groups,
                use_quant_conv: config.use_quant_conv,
                use_post_quant_conv: config.use_post_quant_conv,
            },
        )?;
        Ok(Self { model, scaling_factor: config.scaling_factor })
    }

    /// Decodes denoised latents `(B, C, h, w)` — as the sampler leaves them, before division by
    /// the scaling factor — to images in [−1, 1], `(B, 3, H, W)`.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.model.decode(&(latents / self.scaling_factor)?)
    }
}

/// Maps decoded images in [−1, 1] `(B, 3, H, W)` to 8-bit RGB: `round(clamp((x+1)/2, 0, 1)·255)`.
pub fn to_rgb_images(decoded: &Tensor) -> Result<Vec<RgbImage>> {
    let (batch, _, height, width) = decoded.dims4()?;
    let pixels = ((decoded.to_dtype(DType::F32)? / 2.0)? + 0.5)?
        .clamp(0f32, 1f32)?
        .affine(255.0, 0.0)?
        .round()?
        .to_dtype(DType::U8)?
        .permute((0, 2, 3, 1))?
        .flatten_all()?
        .to_vec1::<u8>()?;
    let per_image = height * width * 3;
    Ok((0..batch)
        .map(|i| {
            let buffer = pixels[i * per_image..(i + 1) * per_image].to_vec();
            #[allow(clippy::expect_used, reason = "the slice is one image's worth of the decoded batch")]
            RgbImage::from_raw(width as u32, height as u32, buffer).expect("buffer sized to the image")
        })
        .collect())
}
