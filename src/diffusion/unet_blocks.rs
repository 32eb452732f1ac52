//! The UNet's down and up blocks: resnets, optionally a spatial transformer after each, and a
//! resampler.
//!
//! Forked from candle-transformers' `unet_2d_blocks` because its `DownBlock2D` and `UpBlock2D`
//! (and the cross-attention blocks built on them) ignore `resnet_groups` and always normalise in
//! 32 groups, and because the transformers are our own (`attention`). The resnets and
//! convolutions run on our CPU kernels (`resnet`, `ops`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::attention::{SpatialTransformer, TransformerSettings};
use super::ops::{self, Conv2d};
use super::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use super::unet::Conditioning;

/// What the blocks of one UNet share.
#[derive(Debug, Clone, Copy)]
pub struct BlockSettings {
    pub time_embed_dim: usize,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
}

/// The spatial transformers of one block: `heads` heads, `depth` transformer layers each.
#[derive(Debug, Clone, Copy)]
pub struct Transformers {
    pub heads: usize,
    pub depth: usize,
}

fn resnet(vb: VarBuilder, in_channels: usize, out_channels: usize, s: &BlockSettings) -> Result<ResnetBlock2D> {
    let config = ResnetBlock2DConfig {
        out_channels: Some(out_channels),
        temb_channels: Some(s.time_embed_dim),
        groups: s.norm_num_groups,
        eps: s.norm_eps,
        ..Default::default()
    };
    ResnetBlock2D::new(vb, in_channels, config)
}

fn transformer(vb: VarBuilder, channels: usize, transformers: Transformers, s: &BlockSettings) -> Result<SpatialTransformer> {
    let settings = TransformerSettings {
        channels,
        heads: transformers.heads,
        depth: transformers.depth,
        norm_num_groups: s.norm_num_groups,
        context_dim: s.cross_attention_dim,
        use_linear_projection: s.use_linear_projection,
    };
    SpatialTransformer::new(vb, settings)
}

fn conv3(vb: VarBuilder, channels: usize, stride: usize, padding: usize) -> Result<Conv2d> {
    ops::conv2d_layer(channels, channels, 3, Conv2dConfig { stride, padding, ..Default::default() }, vb.pp("conv"))
}

pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Option<Vec<SpatialTransformer>>,
    /// A stride-2 convolution, on every block but the last.
    downsampler: Option<Conv2d>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        num_layers: usize,
        transformers: Option<Transformers>,
        downsample_padding: Option<usize>,
        s: &BlockSettings,
    ) -> Result<Self> {
        let resnets = (0..num_layers)
            .map(|i| {
                let in_channels = if i == 0 { in_channels } else { out_channels };
                resnet(vb.pp(format!("resnets.{i}")), in_channels, out_channels, s)
            })
            .collect::<Result<Vec<_>>>()?;
        let attentions = transformers
            .map(|a| (0..num_layers).map(|i| transformer(vb.pp(format!("attentions.{i}")), out_channels, a, s)).collect())
            .transpose()?;
        let downsampler = downsample_padding.map(|padding| conv3(vb.pp("downsamplers.0"), out_channels, 2, padding)).transpose()?;
        Ok(Self { resnets, attentions, downsampler })
    }

    /// Its spatial transformers, in order.
    pub fn transformers_mut(&mut self) -> impl Iterator<Item = &mut SpatialTransformer> {
        self.attentions.iter_mut().flatten()
    }

    /// Returns the block's output and the skips it hands to its up block.
    pub fn forward(&self, xs: &Tensor, temb: &Tensor, conditioning: &Conditioning) -> Result<(Tensor, Vec<Tensor>)> {
        let mut xs = xs.clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attentions) = &self.attentions {
                xs = attentions[i].forward(&xs, conditioning)?;
            }
            skips.push(xs.clone());
        }
        if let Some(downsampler) = &self.downsampler {
            xs = downsampler.forward(&xs)?;
            skips.push(xs.clone());
        }
        Ok((xs, skips))
    }
}

pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Option<Vec<SpatialTransformer>>,
    /// Nearest-neighbour ×2 then a convolution, on every block but the last.
    upsampler: Option<Conv2d>,
}

impl UpBlock {
    /// `skip_channels[i]` is the width of the skip that resnet `i` concatenates.
    pub fn new(
        vb: VarBuilder,
        prev_output_channels: usize,
        out_channels: usize,
        skip_channels: &[usize],
        transformers: Option<Transformers>,
        add_upsample: bool,
        s: &BlockSettings,
    ) -> Result<Self> {
        let resnets = skip_channels
            .iter()
            .enumerate()
            .map(|(i, skip)| {
                let in_channels = if i == 0 { prev_output_channels } else { out_channels };
                resnet(vb.pp(format!("resnets.{i}")), in_channels + skip, out_channels, s)
            })
            .collect::<Result<Vec<_>>>()?;
        let attentions = transformers
            .map(|a| (0..skip_channels.len()).map(|i| transformer(vb.pp(format!("attentions.{i}")), out_channels, a, s)).collect())
            .transpose()?;
        let upsampler = if add_upsample { Some(conv3(vb.pp("upsamplers.0"), out_channels, 1, 1)?) } else { None };
        Ok(Self { resnets, attentions, upsampler })
    }

    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// Its spatial transformers, in order.
    pub fn transformers_mut(&mut self) -> impl Iterator<Item = &mut SpatialTransformer> {
        self.attentions.iter_mut().flatten()
    }

    /// `skips` are this block's skips in the order the down path produced them; the last is
    /// consumed first.
    pub fn forward(&self, xs: &Tensor, skips: &[Tensor], temb: &Tensor, conditioning: &Conditioning) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = Tensor::cat(&[&xs, &skips[skips.len() - 1 - i]], 1)?;
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attentions) = &self.attentions {
                xs = attentions[i].forward(&xs, conditioning)?;
            }
        }
        match &self.upsampler {
            Some(conv) => conv.forward_upsampled(&xs, 2),
            None => Ok(xs),
        }
    }
}

/// The bottleneck: resnet, spatial transformer, resnet.
pub struct MidBlock {
    first: ResnetBlock2D,
    attention: SpatialTransformer,
    second: ResnetBlock2D,
}

impl MidBlock {
    pub fn new(vb: VarBuilder, channels: usize, transformers: Transformers, output_scale_factor: f64, s: &BlockSettings) -> Result<Self> {
        let resnet = |vb: VarBuilder| {
            let config = ResnetBlock2DConfig {
                out_channels: Some(channels),
                temb_channels: Some(s.time_embed_dim),
                groups: s.norm_num_groups,
                eps: s.norm_eps,
                output_scale_factor,
                ..Default::default()
            };
            ResnetBlock2D::new(vb, channels, config)
        };
        Ok(Self {
            first: resnet(vb.pp("resnets.0"))?,
            attention: transformer(vb.pp("attentions.0"), channels, transformers, s)?,
            second: resnet(vb.pp("resnets.1"))?,
        })
    }

    /// Its spatial transformer.
    pub fn transformers_mut(&mut self) -> impl Iterator<Item = &mut SpatialTransformer> {
        std::iter::once(&mut self.attention)
    }

    pub fn forward(&self, xs: &Tensor, temb: &Tensor, conditioning: &Conditioning) -> Result<Tensor> {
        let xs = self.first.forward(xs, Some(temb))?;
        let xs = self.attention.forward(&xs, conditioning)?;
        self.second.forward(&xs, Some(temb))
    }
}
