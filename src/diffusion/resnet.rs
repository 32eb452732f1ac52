//! The residual block of the UNet and the VAE (diffusers' `ResnetBlock2D`): group norm, SiLU,
//! 3×3 convolution, plus the time embedding, group norm, SiLU, 3×3 convolution, plus the
//! (1×1-projected when the widths differ) input.
//!
//! Forked from candle-transformers' `stable_diffusion::resnet` so that it runs on our CPU kernels
//! (`ops`: its layers are private, so they cannot be swapped). Same weights, config and maths;
//! the norm and the SiLU after it are one pass, and a division by an output scale of 1 is skipped.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Linear, VarBuilder};
pub use candle_transformers::models::stable_diffusion::resnet::ResnetBlock2DConfig;

use super::ops::{self, Conv2d, GroupNorm};

#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    time_emb_proj: Option<Linear>,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn new(vb: VarBuilder, in_channels: usize, config: ResnetBlock2DConfig) -> Result<Self> {
        let out_channels = config.out_channels.unwrap_or(in_channels);
        let conv3 = Conv2dConfig { padding: 1, ..Default::default() };
        let use_in_shortcut = config.use_in_shortcut.unwrap_or(in_channels != out_channels);
        Ok(Self {
            norm1: ops::group_norm(config.groups, in_channels, config.eps, vb.pp("norm1"))?,
            conv1: ops::conv2d_layer(in_channels, out_channels, 3, conv3, vb.pp("conv1"))?,
            norm2: ops::group_norm(config.groups_out.unwrap_or(config.groups), out_channels, config.eps, vb.pp("norm2"))?,
            conv2: ops::conv2d_layer(out_channels, out_channels, 3, conv3, vb.pp("conv2"))?,
            time_emb_proj: config
                .temb_channels
                .map(|temb_channels| candle_nn::linear(temb_channels, out_channels, vb.pp("time_emb_proj")))
                .transpose()?,
            conv_shortcut: use_in_shortcut
                .then(|| ops::conv2d_layer(in_channels, out_channels, 1, Default::default(), vb.pp("conv_shortcut")))
                .transpose()?,
            output_scale_factor: config.output_scale_factor,
        })
    }

    pub fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        let hidden = self.conv1.forward(&self.norm1.forward_silu(xs)?)?;
        let hidden = match (temb, &self.time_emb_proj) {
            (Some(temb), Some(proj)) => {
                proj.forward(&candle_nn::ops::silu(temb)?)?.unsqueeze(D::Minus1)?.unsqueeze(D::Minus1)?.broadcast_add(&hidden)?
            }
            _ => hidden,
        };
        let hidden = self.conv2.forward(&self.norm2.forward_silu(&hidden)?)?;
        let out = (shortcut + hidden)?;
        if self.output_scale_factor == 1.0 { Ok(out) } else { out / self.output_scale_factor }
    }
}
