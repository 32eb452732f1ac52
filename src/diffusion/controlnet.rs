//! The pose ControlNet: diffusers' `ControlNetModel`, built from its `config.json`. A copy of the
//! UNet's time embedding and down path (input convolution, down blocks, mid block) reads the
//! latents plus an embedding of the conditioning image, and zero-initialised 1×1 convolutions
//! turn each skip and the mid-block output into residuals that the UNet adds to its own
//! (RECIPE.md, "Pose ControlNet").

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use serde::Deserialize;

use super::ops::{self, Conv2d};
use super::unet::{Conditioning, DownPath, DownPathConfig, DownPathOutput, TimeEmbedding};

/// A diffusers `ControlNetModel` config: the down path the UNet shares, plus the conditioning
/// embedding's layout.
#[derive(Debug, Clone, Deserialize)]
pub struct ControlNetConfig {
    #[serde(flatten)]
    pub down: DownPathConfig,
    #[serde(default = "default_embedding_channels")]
    pub conditioning_embedding_out_channels: Vec<usize>,
    #[serde(default = "three")]
    pub conditioning_channels: usize,
    #[serde(default = "rgb")]
    pub controlnet_conditioning_channel_order: String,
    #[serde(default)]
    pub global_pool_conditions: bool,
}

fn default_embedding_channels() -> Vec<usize> {
    vec![16, 32, 96, 256]
}
fn three() -> usize {
    3
}
fn rgb() -> String {
    "rgb".into()
}

impl ControlNetConfig {
    /// Says what is wrong when this ControlNet cannot be built from the config.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.down.validate()?;
        if self.conditioning_embedding_out_channels.is_empty() {
            return Err("conditioning_embedding_out_channels is empty".into());
        }
        if self.controlnet_conditioning_channel_order != "rgb" || self.global_pool_conditions {
            return Err("only RGB conditioning without global pooling is supported".into());
        }
        Ok(())
    }

    /// Image pixels per latent pixel the conditioning embedding expects: each of its blocks
    /// halves the image.
    pub fn image_scale_factor(&self) -> usize {
        1 << (self.conditioning_embedding_out_channels.len() - 1)
    }
}

/// What a ControlNet adds to the UNet: one residual per skip, in the down path's order, and one
/// for the mid-block output.
pub struct ControlResiduals {
    pub down: Vec<Tensor>,
    pub mid: Tensor,
}

/// Convolutions from the image to the latent resolution: 3×3, then per block a 3×3 and a
/// stride-2 3×3, SiLU between, and a (zero-initialised) 3×3 to the UNet's first width.
struct ConditioningEmbedding {
    conv_in: Conv2d,
    blocks: Vec<Conv2d>,
    conv_out: Conv2d,
}

impl ConditioningEmbedding {
    fn new(vb: VarBuilder, config: &ControlNetConfig) -> Result<Self> {
        let channels = &config.conditioning_embedding_out_channels;
        let same = Conv2dConfig { padding: 1, ..Default::default() };
        let halve = Conv2dConfig { padding: 1, stride: 2, ..Default::default() };
        let conv_in = ops::conv2d_layer(config.conditioning_channels, channels[0], 3, same, vb.pp("conv_in"))?;
        let mut blocks = Vec::new();
        for (i, pair) in channels.windows(2).enumerate() {
            blocks.push(ops::conv2d_layer(pair[0], pair[0], 3, same, vb.pp(format!("blocks.{}", 2 * i)))?);
            blocks.push(ops::conv2d_layer(pair[0], pair[1], 3, halve, vb.pp(format!("blocks.{}", 2 * i + 1)))?);
        }
        let last = channels[channels.len() - 1];
        let conv_out = ops::conv2d_layer(last, config.down.block_out_channels[0], 3, same, vb.pp("conv_out"))?;
        Ok(Self { conv_in, blocks, conv_out })
    }

    fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let mut xs = candle_nn::ops::silu(&self.conv_in.forward(image)?)?;
        for block in &self.blocks {
            xs = candle_nn::ops::silu(&block.forward(&xs)?)?;
        }
        self.conv_out.forward(&xs)
    }
}

pub struct ControlNet {
    time_embedding: TimeEmbedding,
    conditioning_embedding: ConditioningEmbedding,
    down_path: DownPath,
    /// One 1×1 convolution per skip.
    down_residuals: Vec<Conv2d>,
    mid_residual: Conv2d,
    image_scale_factor: usize,
}

impl ControlNet {
    /// Builds the ControlNet from its weights (`vb` at the checkpoint's root) and its config.
    pub fn new(vb: VarBuilder, config: &ControlNetConfig) -> Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let down = &config.down;
        let channels = &down.block_out_channels;
        // The skips' widths, as the down path hands them on: conv_in's, each resnet's, each
        // downsampler's.
        let mut skip_channels = vec![channels[0]];
        for (i, &width) in channels.iter().enumerate() {
            skip_channels.extend(std::iter::repeat_n(width, down.layers_per_block));
            if i + 1 < channels.len() {
                skip_channels.push(width);
            }
        }
        let one_by_one = |vb: VarBuilder, width: usize| ops::conv2d_layer(width, width, 1, Default::default(), vb);
        let down_residuals = skip_channels
            .iter()
            .enumerate()
            .map(|(i, &width)| one_by_one(vb.pp(format!("controlnet_down_blocks.{i}")), width))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            time_embedding: TimeEmbedding::new(vb.clone(), down)?,
            conditioning_embedding: ConditioningEmbedding::new(vb.pp("controlnet_cond_embedding"), config)?,
            down_path: DownPath::new(vb.clone(), down)?,
            down_residuals,
            mid_residual: one_by_one(vb.pp("controlnet_mid_block"), channels[channels.len() - 1])?,
            image_scale_factor: config.image_scale_factor(),
        })
    }

    /// Image pixels per latent pixel this ControlNet's conditioning embedding expects.
    pub fn image_scale_factor(&self) -> usize {
        self.image_scale_factor
    }

    /// The residuals for `sample` `(B, C, h, w)` at `timestep`, given the conditioning image
    /// `(B, 3, H, W)` in [0, 1] and `conditioning`'s context, each multiplied by `scale`.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        conditioning: &Conditioning,
        image: &Tensor,
        scale: f64,
    ) -> Result<ControlResiduals> {
        let temb = self.time_embedding.forward(timestep, sample)?;
        let xs = (self.down_path.conv_in(sample)? + self.conditioning_embedding.forward(image)?)?;
        let DownPathOutput { mid, skips } = self.down_path.forward(xs, &temb, conditioning)?;
        let down = skips.iter().zip(&self.down_residuals).map(|(skip, conv)| conv.forward(skip)? * scale).collect::<Result<Vec<_>>>()?;
        let mid = (self.mid_residual.forward(&mid)? * scale)?;
        Ok(ControlResiduals { down, mid })
    }
}
