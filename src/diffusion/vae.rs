//! The SD1.5 VAE, built from a diffusers `config.json`: its decoder, its encoder (loaded only
//! when an image is to be encoded), and the mapping from decoded tensors to 8-bit RGB images.
//!
//! Forked from candle-transformers' `stable_diffusion::vae` so that it runs on our CPU kernels
//! (`resnet`, `ops`; candle's keeps its layers private) and so that the encoder is separate and
//! gives the latent distribution's mean. Same weights and maths; each upsampler's ×2
//! nearest-neighbour upsampling happens inside its convolution instead of as a 4× larger tensor.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Linear, VarBuilder};
use image::RgbImage;
use serde::Deserialize;

use super::ops::{self, Conv2d, GroupNorm};
use super::resnet::{ResnetBlock2D, ResnetBlock2DConfig};

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

/// The VAE's single-head self-attention over pixels, in its mid block.
struct AttentionBlock {
    group_norm: GroupNorm,
    query: Linear,
    key: Linear,
    value: Linear,
    proj_attn: Linear,
}

/// A channels × channels projection, stored as a linear layer or as a 1×1 convolution.
fn projection(channels: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = match vb.get((channels, channels), "weight") {
        Ok(weight) => weight,
        Err(_) => vb.get((channels, channels, 1, 1), "weight")?.reshape((channels, channels))?,
    };
    Ok(Linear::new(weight, Some(vb.get(channels, "bias")?)))
}

impl AttentionBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        // diffusers renamed the projections; either set of names loads.
        let names =
            if vb.contains_tensor("to_q.weight") { ["to_q", "to_k", "to_v", "to_out.0"] } else { ["query", "key", "value", "proj_attn"] };
        Ok(Self {
            group_norm: ops::group_norm(groups, channels, 1e-6, vb.pp("group_norm"))?,
            query: projection(channels, vb.pp(names[0]))?,
            key: projection(channels, vb.pp(names[1]))?,
            value: projection(channels, vb.pp(names[2]))?,
            proj_attn: projection(channels, vb.pp(names[3]))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = xs.dims4()?;
        let tokens = self.group_norm.forward(xs)?.reshape((batch, channels, height * width))?.transpose(1, 2)?;
        let attended = ops::attention(&self.query.forward(&tokens)?, &self.key.forward(&tokens)?, &self.value.forward(&tokens)?, 1)?;
        let out = self.proj_attn.forward(&attended)?.transpose(1, 2)?.reshape((batch, channels, height, width))?;
        out + xs
    }
}

const VAE_EPS: f64 = 1e-6;

fn conv3(vb: VarBuilder, channels_in: usize, channels_out: usize, stride: usize, padding: usize) -> Result<Conv2d> {
    ops::conv2d_layer(channels_in, channels_out, 3, Conv2dConfig { stride, padding, ..Default::default() }, vb)
}

fn conv1(vb: VarBuilder, channels: usize) -> Result<Conv2d> {
    ops::conv2d_layer(channels, channels, 1, Default::default(), vb)
}

/// A resnet without a time embedding, as both halves use them.
fn resnet(vb: VarBuilder, config: &VaeConfig, in_channels: usize, out_channels: usize) -> Result<ResnetBlock2D> {
    let resnet = ResnetBlock2DConfig {
        out_channels: Some(out_channels),
        temb_channels: None,
        groups: config.norm_num_groups,
        eps: VAE_EPS,
        ..Default::default()
    };
    ResnetBlock2D::new(vb, in_channels, resnet)
}

/// The mid block of either half: a resnet, the attention, a resnet, all at the deepest width.
struct MidBlock {
    first: ResnetBlock2D,
    attention: AttentionBlock,
    second: ResnetBlock2D,
}

impl MidBlock {
    fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let channels = *config.block_out_channels.last().unwrap_or(&0);
        Ok(Self {
            first: resnet(vb.pp("resnets.0"), config, channels, channels)?,
            attention: AttentionBlock::new(vb.pp("attentions.0"), channels, config.norm_num_groups)?,
            second: resnet(vb.pp("resnets.1"), config, channels, channels)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.first.forward(xs, None)?;
        self.second.forward(&self.attention.forward(&xs)?, None)
    }
}

/// Resnets, then (all but the last block) a ×2 upsampling and a 3×3 convolution.
struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Conv2d>,
}

/// Resnets, then (all but the last block) a stride-2 3×3 convolution over the input padded by
/// one pixel at the right and bottom only.
struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Conv2d>,
}

/// The decoder half of the VAE: latents to images.
pub struct Vae {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    scaling_factor: f64,
}

/// The encoder half of the VAE: images to latents. Loaded only for jobs that encode an image
/// (the Reference Adapter's photo), so that plain jobs do not hold its weights.
pub struct VaeEncoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    latent_channels: usize,
    scaling_factor: f64,
}

impl Vae {
    /// The decoder from the VAE's weights (`vb` at the checkpoint's root) and its config.
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let decoder = vb.pp("decoder");
        let widths: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let up_blocks = widths
            .iter()
            .enumerate()
            .map(|(i, &width)| {
                let vb = decoder.pp(format!("up_blocks.{i}"));
                let in_channels = widths[i.saturating_sub(1)];
                let resnets = (0..config.layers_per_block + 1)
                    .map(|j| resnet(vb.pp(format!("resnets.{j}")), config, if j == 0 { in_channels } else { width }, width))
                    .collect::<Result<Vec<_>>>()?;
                let upsampler = (i + 1 < widths.len()).then(|| conv3(vb.pp("upsamplers.0.conv"), width, width, 1, 1)).transpose()?;
                Ok(UpBlock { resnets, upsampler })
            })
            .collect::<Result<Vec<_>>>()?;
        let latent = config.latent_channels;
        let first = config.block_out_channels[0];
        Ok(Self {
            post_quant_conv: config.use_post_quant_conv.then(|| conv1(vb.pp("post_quant_conv"), latent)).transpose()?,
            conv_in: conv3(decoder.pp("conv_in"), latent, widths[0], 1, 1)?,
            mid_block: MidBlock::new(decoder.pp("mid_block"), config)?,
            up_blocks,
            conv_norm_out: ops::group_norm(config.norm_num_groups, first, VAE_EPS, decoder.pp("conv_norm_out"))?,
            conv_out: conv3(decoder.pp("conv_out"), first, config.out_channels, 1, 1)?,
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
        let mut xs = self.mid_block.forward(&self.conv_in.forward(&xs)?)?;
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                xs = resnet.forward(&xs, None)?;
            }
            if let Some(conv) = &block.upsampler {
                xs = conv.forward_upsampled(&xs, 2)?;
            }
        }
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&xs)?)
    }
}

impl VaeEncoder {
    /// The encoder from the VAE's weights (`vb` at the checkpoint's root) and its config.
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let widths = &config.block_out_channels;
        let encoder = vb.pp("encoder");
        let down_blocks = widths
            .iter()
            .enumerate()
            .map(|(i, &width)| {
                let vb = encoder.pp(format!("down_blocks.{i}"));
                let in_channels = widths[i.saturating_sub(1)];
                let resnets = (0..config.layers_per_block)
                    .map(|j| resnet(vb.pp(format!("resnets.{j}")), config, if j == 0 { in_channels } else { width }, width))
                    .collect::<Result<Vec<_>>>()?;
                let downsampler = (i + 1 < widths.len()).then(|| conv3(vb.pp("downsamplers.0.conv"), width, width, 2, 0)).transpose()?;
                Ok(DownBlock { resnets, downsampler })
            })
            .collect::<Result<Vec<_>>>()?;
        let last = *widths.last().unwrap_or(&0);
        let moments = 2 * config.latent_channels;
        Ok(Self {
            conv_in: conv3(encoder.pp("conv_in"), config.in_channels, widths[0], 1, 1)?,
            down_blocks,
            mid_block: MidBlock::new(encoder.pp("mid_block"), config)?,
            conv_norm_out: ops::group_norm(config.norm_num_groups, last, VAE_EPS, encoder.pp("conv_norm_out"))?,
            conv_out: conv3(encoder.pp("conv_out"), last, moments, 1, 1)?,
            quant_conv: config.use_quant_conv.then(|| conv1(vb.pp("quant_conv"), moments)).transpose()?,
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
            for resnet in &block.resnets {
                xs = resnet.forward(&xs, None)?;
            }
            if let Some(conv) = &block.downsampler {
                xs = conv.forward(&xs.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?)?;
            }
        }
        let xs = self.mid_block.forward(&xs)?;
        let mut moments = self.conv_out.forward(&self.conv_norm_out.forward_silu(&xs)?)?;
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
