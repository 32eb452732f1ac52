//! The SD1.5 VAE, built from a diffusers `config.json`: its decoder, its encoder (loaded only
//! when an image is to be encoded), and the mapping from decoded tensors to 8-bit RGB images.
//!
//! Composed of candle-transformers' public VAE blocks rather than its `AutoEncoderKL`, which
//! always loads both halves and gives no access to the latent distribution's mean.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2d, GroupNorm, VarBuilder};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig, UpDecoderBlock2D, UpDecoderBlock2DConfig,
};
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

/// The decoder half of the VAE: latents to images.
pub struct Vae {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_block: UNetMidBlock2D,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    scaling_factor: f64,
}

/// The encoder half of the VAE: images to latents. Loaded only for jobs that encode an image
/// (the Reference Adapter's photo), so that plain jobs do not hold its weights.
pub struct VaeEncoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    latent_channels: usize,
    scaling_factor: f64,
}

const VAE_EPS: f64 = 1e-6;

fn conv3(vb: VarBuilder, channels_in: usize, channels_out: usize) -> Result<Conv2d> {
    candle_nn::conv2d(channels_in, channels_out, 3, candle_nn::Conv2dConfig { padding: 1, ..Default::default() }, vb)
}

/// The VAE's mid block: resnets around one single-head attention.
fn vae_mid_block(vb: VarBuilder, config: &VaeConfig) -> Result<UNetMidBlock2D> {
    let channels = *config.block_out_channels.last().unwrap_or(&0);
    let mid = UNetMidBlock2DConfig {
        resnet_eps: VAE_EPS,
        output_scale_factor: 1.0,
        attn_num_head_channels: None,
        resnet_groups: Some(config.norm_num_groups),
        ..Default::default()
    };
    UNetMidBlock2D::new(vb, channels, None, mid)
}

impl Vae {
    /// The decoder from the VAE's weights (`vb` at the checkpoint's root) and its config.
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let channels: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let decoder = vb.pp("decoder");
        let up_blocks = (0..channels.len())
            .map(|i| {
                let block = UpDecoderBlock2DConfig {
                    num_layers: config.layers_per_block + 1,
                    resnet_eps: VAE_EPS,
                    resnet_groups: config.norm_num_groups,
                    add_upsample: i + 1 < channels.len(),
                    ..Default::default()
                };
                UpDecoderBlock2D::new(decoder.pp(format!("up_blocks.{i}")), channels[i.saturating_sub(1)], channels[i], block)
            })
            .collect::<Result<Vec<_>>>()?;
        let latent = config.latent_channels;
        Ok(Self {
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| candle_nn::conv2d(latent, latent, 1, Default::default(), vb.pp("post_quant_conv")))
                .transpose()?,
            conv_in: conv3(decoder.pp("conv_in"), latent, channels[0])?,
            mid_block: vae_mid_block(decoder.pp("mid_block"), config)?,
            up_blocks,
            conv_norm_out: candle_nn::group_norm(
                config.norm_num_groups,
                config.block_out_channels[0],
                VAE_EPS,
                decoder.pp("conv_norm_out"),
            )?,
            conv_out: conv3(decoder.pp("conv_out"), config.block_out_channels[0], config.out_channels)?,
            scaling_factor: config.scaling_factor,
        })
    }

    /// Decodes denoised latents `(B, C, h, w)` — as the sampler leaves them, before division by
    /// the scaling factor — to images in [−1, 1], `(B, 3, H, W)`.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let mut xs = (latents / self.scaling_factor)?;
        if let Some(conv) = &self.post_quant_conv {
            xs = conv.forward(&xs)?;
        }
        let mut xs = self.mid_block.forward(&self.conv_in.forward(&xs)?, None)?;
        for block in &self.up_blocks {
            xs = block.forward(&xs)?;
        }
        self.conv_out.forward(&candle_nn::ops::silu(&self.conv_norm_out.forward(&xs)?)?)
    }
}

impl VaeEncoder {
    /// The encoder from the VAE's weights (`vb` at the checkpoint's root) and its config.
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let channels = &config.block_out_channels;
        let encoder = vb.pp("encoder");
        let down_blocks = (0..channels.len())
            .map(|i| {
                let block = DownEncoderBlock2DConfig {
                    num_layers: config.layers_per_block,
                    resnet_eps: VAE_EPS,
                    resnet_groups: config.norm_num_groups,
                    add_downsample: i + 1 < channels.len(),
                    downsample_padding: 0,
                    ..Default::default()
                };
                DownEncoderBlock2D::new(encoder.pp(format!("down_blocks.{i}")), channels[i.saturating_sub(1)], channels[i], block)
            })
            .collect::<Result<Vec<_>>>()?;
        let last = *channels.last().unwrap_or(&0);
        let moments = 2 * config.latent_channels;
        Ok(Self {
            conv_in: conv3(encoder.pp("conv_in"), config.in_channels, channels[0])?,
            down_blocks,
            mid_block: vae_mid_block(encoder.pp("mid_block"), config)?,
            conv_norm_out: candle_nn::group_norm(config.norm_num_groups, last, VAE_EPS, encoder.pp("conv_norm_out"))?,
            conv_out: conv3(encoder.pp("conv_out"), last, moments)?,
            quant_conv: config
                .use_quant_conv
                .then(|| candle_nn::conv2d(moments, moments, 1, Default::default(), vb.pp("quant_conv")))
                .transpose()?,
            latent_channels: config.latent_channels,
            scaling_factor: config.scaling_factor,
        })
    }

    /// Images in [−1, 1] `(B, 3, H, W)` to the mean of their latent distribution times the
    /// scaling factor, `(B, C, h, w)`: what the UNet works on. (The posterior's sample would add
    /// noise of its tiny standard deviation; the mean is the deterministic choice.)
    pub fn encode_mean(&self, images: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(images)?;
        for block in &self.down_blocks {
            xs = block.forward(&xs)?;
        }
        let xs = self.mid_block.forward(&xs, None)?;
        let mut moments = self.conv_out.forward(&candle_nn::ops::silu(&self.conv_norm_out.forward(&xs)?)?)?;
        if let Some(conv) = &self.quant_conv {
            moments = conv.forward(&moments)?;
        }
        moments.narrow(1, 0, self.latent_channels)? * self.scaling_factor
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
