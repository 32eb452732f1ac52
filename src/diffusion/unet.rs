//! The Arc2Face UNet: SD1.5's `UNet2DConditionModel`, built from a diffusers `config.json`.
//!
//! Forked from candle-transformers' `stable_diffusion::unet_2d` (its resnets and timestep layers
//! are reused; the blocks and transformers are forked in `unet_blocks` and `attention`) because:
//! - the sinusoidal timestep embedding is computed in f32 and cast afterwards, as diffusers does;
//!   candle's computes it in the model dtype, which in f16 is off by up to 0.3 at t = 999;
//! - its down path (input convolution, down blocks, mid block) is a part of its own that the pose
//!   ControlNet reuses, and the skips it hands to the up path are gathered in one visible place;
//! - everything that conditions a call travels as one `Conditioning` value.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::embeddings::{TimestepEmbedding, Timesteps};
use serde::Deserialize;

use std::collections::HashMap;

use super::attention::SpatialTransformer;
use super::controlnet::ControlResiduals;
use super::expression_adapter::ExpressionAttention;
use super::lora::LoraSidePath;
use super::ops::{self, Conv2d, GroupNorm};
use super::reference_adapter::{BankRecorder, ReferenceBank, ReferenceCall};
use super::unet_blocks::{BlockSettings, DownBlock, MidBlock, Transformers, UpBlock};

/// A per-block setting that diffusers configs give either once or for each block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, block: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(values) => values[block],
        }
    }

    fn len_matches(&self, n: usize) -> bool {
        match self {
            PerBlock::One(_) => true,
            PerBlock::Each(values) => values.len() == n,
        }
    }
}

/// The fields the UNet and a ControlNet share — their time embedding, input convolution, down
/// blocks and mid block — with diffusers' defaults and names, so that one struct reads both
/// `UNet2DConditionModel` and `ControlNetModel` configs. Options that change the architecture
/// in ways these models do not implement are read so that `validate` can refuse them by name.
#[derive(Debug, Clone, Deserialize)]
pub struct DownPathConfig {
    #[serde(default = "four")]
    pub in_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    #[serde(default = "two")]
    pub layers_per_block: usize,
    /// In SD1.5 configs this is the number of heads, not their size (a diffusers quirk).
    #[serde(default = "eight_heads")]
    pub attention_head_dim: PerBlock,
    /// When set, the number of heads; `attention_head_dim` is then ignored.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default = "one_layer")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default = "default_cross_attention_dim")]
    pub cross_attention_dim: usize,
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "one")]
    pub downsample_padding: usize,
    #[serde(default = "one_f64")]
    pub mid_block_scale_factor: f64,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default)]
    pub mid_block_type: Option<String>,
    #[serde(default)]
    pub class_embed_type: Option<serde_json::Value>,
    #[serde(default)]
    pub addition_embed_type: Option<serde_json::Value>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<serde_json::Value>,
    #[serde(default)]
    pub encoder_hid_dim: Option<serde_json::Value>,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    #[serde(default)]
    pub resnet_time_scale_shift: Option<String>,
}

/// A diffusers `UNet2DConditionModel` config: the shared down path plus the up path.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(flatten)]
    pub down: DownPathConfig,
    #[serde(default = "four")]
    pub out_channels: usize,
    pub sample_size: usize,
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default)]
    pub dual_cross_attention: bool,
}

fn four() -> usize {
    4
}
fn two() -> usize {
    2
}
fn one() -> usize {
    1
}
fn one_f64() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn eight_heads() -> PerBlock {
    PerBlock::One(8)
}
fn one_layer() -> PerBlock {
    PerBlock::One(1)
}
fn default_cross_attention_dim() -> usize {
    1280
}
fn default_norm_num_groups() -> usize {
    32
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn silu() -> String {
    "silu".into()
}

impl DownPathConfig {
    /// The number of attention heads of each block.
    fn heads(&self) -> &PerBlock {
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim)
    }

    fn has_cross_attention(&self, block: usize) -> bool {
        self.down_block_types[block] == "CrossAttnDownBlock2D"
    }

    /// The spatial transformers of block `block`, if it has any.
    fn transformers(&self, block: usize) -> Option<Transformers> {
        self.has_cross_attention(block)
            .then(|| Transformers { heads: self.heads().get(block), depth: self.transformer_layers_per_block.get(block) })
    }

    fn block_settings(&self) -> BlockSettings {
        BlockSettings {
            time_embed_dim: self.time_embed_dim(),
            norm_num_groups: self.norm_num_groups,
            norm_eps: self.norm_eps,
            cross_attention_dim: self.cross_attention_dim,
            use_linear_projection: self.use_linear_projection,
        }
    }

    fn time_embed_dim(&self) -> usize {
        self.block_out_channels[0] * 4
    }

    /// Says what is wrong when the down path cannot be built from the config.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n {
            return Err(format!(
                "block_out_channels and down_block_types must have the same, non-zero length (got {n}, {})",
                self.down_block_types.len()
            ));
        }
        if let Some(other) = self.down_block_types.iter().find(|kind| !matches!(kind.as_str(), "CrossAttnDownBlock2D" | "DownBlock2D")) {
            return Err(format!("down block type {other:?} is not supported"));
        }
        if !self.heads().len_matches(n) || !self.transformer_layers_per_block.len_matches(n) {
            return Err("per-block attention settings must have one value per block".into());
        }
        for (i, &channels) in self.block_out_channels.iter().enumerate() {
            let heads = self.heads().get(i);
            if heads == 0 || channels % heads != 0 || channels % self.norm_num_groups != 0 {
                return Err(format!("block {i}: {channels} channels do not split into {heads} heads and {} groups", self.norm_num_groups));
            }
        }
        let unsupported = [
            ("act_fn", self.act_fn != "silu"),
            ("mid_block_type", self.mid_block_type.as_deref().is_some_and(|t| t != "UNetMidBlock2DCrossAttn")),
            ("class_embed_type", self.class_embed_type.as_ref().is_some_and(|v| !v.is_null())),
            ("addition_embed_type", self.addition_embed_type.as_ref().is_some_and(|v| !v.is_null())),
            ("time_cond_proj_dim", self.time_cond_proj_dim.as_ref().is_some_and(|v| !v.is_null())),
            ("encoder_hid_dim", self.encoder_hid_dim.as_ref().is_some_and(|v| !v.is_null())),
            ("only_cross_attention", self.only_cross_attention.as_bool().unwrap_or(false)),
            ("resnet_time_scale_shift", self.resnet_time_scale_shift.as_deref().is_some_and(|s| s != "default")),
        ];
        match unsupported.iter().find(|(_, set)| *set) {
            Some((name, _)) => Err(format!("{name} is set to a value this model does not support")),
            None => Ok(()),
        }
    }
}

impl UNetConfig {
    pub fn in_channels(&self) -> usize {
        self.down.in_channels
    }

    pub fn cross_attention_dim(&self) -> usize {
        self.down.cross_attention_dim
    }

    /// Says what is wrong when this UNet cannot be built from the config.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.down.validate()?;
        let n = self.down.block_out_channels.len();
        if self.up_block_types.len() != n {
            return Err(format!("up_block_types must have one entry per down block ({n}), got {}", self.up_block_types.len()));
        }
        for (i, kind) in self.down.down_block_types.iter().enumerate() {
            let mirrored = if kind == "CrossAttnDownBlock2D" { "CrossAttnUpBlock2D" } else { "UpBlock2D" };
            if self.up_block_types[n - 1 - i] != mirrored {
                return Err(format!("up_block_types must mirror down_block_types ({:?} expected at up block {})", mirrored, n - 1 - i));
            }
        }
        if self.dual_cross_attention {
            return Err("dual_cross_attention is set to a value this model does not support".into());
        }
        Ok(())
    }

    /// Latent sizes must halve cleanly at every down block.
    pub fn latent_multiple(&self) -> usize {
        1 << (self.down.block_out_channels.len() - 1)
    }
}

/// What conditions one UNet call besides the sample and the timestep.
#[derive(Clone, Copy)]
pub struct Conditioning<'a> {
    /// The cross-attention context `(B, 77, cross_attention_dim)`.
    pub context: &'a Tensor,
    /// A ControlNet's residuals, added to the skips and the mid-block output.
    pub control: Option<&'a ControlResiduals>,
    /// The Expression Adapter's tokens for the cross-attention layers it is attached to.
    pub expression: Option<ExpressionTokens<'a>>,
    /// The Reference Adapter's part: recording its bank, or attending to it.
    pub reference: Option<ReferenceCall<'a>>,
}

impl<'a> Conditioning<'a> {
    /// Conditioning on the context alone.
    pub fn context(context: &'a Tensor) -> Self {
        Self { context, control: None, expression: None, reference: None }
    }
}

/// Expression tokens `(B, T, cross_attention_dim)` and how much they count.
#[derive(Clone, Copy)]
pub struct ExpressionTokens<'a> {
    pub tokens: &'a Tensor,
    pub scale: f64,
}

/// The sinusoidal timestep embedding and its MLP. The sinusoid is computed in f32 and cast to
/// the model dtype afterwards, as diffusers does.
pub struct TimeEmbedding {
    sinusoid: Timesteps,
    mlp: TimestepEmbedding,
}

impl TimeEmbedding {
    pub fn new(vb: VarBuilder, config: &DownPathConfig) -> Result<Self> {
        let channels = config.block_out_channels[0];
        Ok(Self {
            sinusoid: Timesteps::new(channels, config.flip_sin_to_cos, config.freq_shift),
            mlp: TimestepEmbedding::new(vb.pp("time_embedding"), channels, config.time_embed_dim())?,
        })
    }

    /// The embedding of `timestep` for a batch of `like`'s size, in `like`'s dtype.
    pub fn forward(&self, timestep: f64, like: &Tensor) -> Result<Tensor> {
        let timesteps = Tensor::full(timestep as f32, like.dim(0)?, like.device())?;
        self.mlp.forward(&self.sinusoid.forward(&timesteps)?.to_dtype(like.dtype())?)
    }
}

/// The input convolution, the down blocks and the mid block: the half of the UNet that a
/// ControlNet copies.
pub struct DownPath {
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
}

/// What the down path hands on: the mid block's output and every skip, in the order the up
/// blocks consume them in reverse.
pub struct DownPathOutput {
    pub mid: Tensor,
    pub skips: Vec<Tensor>,
}

impl DownPath {
    /// Builds from the weights at the checkpoint's root and a validated config.
    pub fn new(vb: VarBuilder, config: &DownPathConfig) -> Result<Self> {
        let channels = &config.block_out_channels;
        let n = channels.len();
        let settings = config.block_settings();
        let conv3 = candle_nn::Conv2dConfig { padding: 1, ..Default::default() };
        let conv_in = ops::conv2d_layer(config.in_channels, channels[0], 3, conv3, vb.pp("conv_in"))?;
        let down_blocks = (0..n)
            .map(|i| {
                let in_channels = if i == 0 { channels[0] } else { channels[i - 1] };
                let is_last = i + 1 == n;
                DownBlock::new(
                    vb.pp(format!("down_blocks.{i}")),
                    in_channels,
                    channels[i],
                    config.layers_per_block,
                    config.transformers(i),
                    (!is_last).then_some(config.downsample_padding),
                    &settings,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let mid_transformers = Transformers { heads: config.heads().get(n - 1), depth: config.transformer_layers_per_block.get(n - 1) };
        let mid_block = MidBlock::new(vb.pp("mid_block"), channels[n - 1], mid_transformers, config.mid_block_scale_factor, &settings)?;
        Ok(Self { conv_in, down_blocks, mid_block })
    }

    pub fn conv_in(&self, sample: &Tensor) -> Result<Tensor> {
        self.conv_in.forward(sample)
    }

    /// Its down blocks' spatial transformers, then its mid block's.
    fn transformers_mut(&mut self) -> (Vec<&mut SpatialTransformer>, Vec<&mut SpatialTransformer>) {
        let down = self.down_blocks.iter_mut().flat_map(DownBlock::transformers_mut).collect();
        (down, self.mid_block.transformers_mut().collect())
    }

    /// Runs the down blocks and the mid block on `conv_in`'s output.
    pub fn forward(&self, xs: Tensor, temb: &Tensor, conditioning: &Conditioning) -> Result<DownPathOutput> {
        let mut skips = vec![xs.clone()];
        let mut xs = xs;
        for block in &self.down_blocks {
            let (out, block_skips) = block.forward(&xs, temb, conditioning)?;
            skips.extend(block_skips);
            xs = out;
        }
        let mid = self.mid_block.forward(&xs, temb, conditioning)?;
        Ok(DownPathOutput { mid, skips })
    }
}

pub struct UNet {
    time_embedding: TimeEmbedding,
    down_path: DownPath,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    center_input_sample: bool,
    /// How many transformer blocks it has (the entries of a reference bank).
    transformer_blocks: usize,
}

impl UNet {
    /// Builds the UNet from its weights (`vb` at the checkpoint's root) and a validated config.
    pub fn new(vb: VarBuilder, config: &UNetConfig) -> Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let down = &config.down;
        let channels = &down.block_out_channels;
        let n = channels.len();
        let settings = down.block_settings();

        // Up block i mirrors down block n−1−i and consumes its skips (plus, at its last resnet,
        // the one that entered that down block).
        let up_blocks = (0..n)
            .map(|i| {
                let mirrored = n - 1 - i;
                let out_channels = channels[mirrored];
                let prev_output_channels = if i == 0 { channels[n - 1] } else { channels[mirrored + 1] };
                let block_input_channels = channels[mirrored.saturating_sub(1)];
                let mut skip_channels = vec![out_channels; down.layers_per_block + 1];
                skip_channels[down.layers_per_block] = block_input_channels;
                UpBlock::new(
                    vb.pp(format!("up_blocks.{i}")),
                    prev_output_channels,
                    out_channels,
                    &skip_channels,
                    down.transformers(mirrored),
                    i + 1 < n,
                    &settings,
                )
            })
            .collect::<Result<Vec<_>>>()?;

        let conv3 = candle_nn::Conv2dConfig { padding: 1, ..Default::default() };
        let mut unet = Self {
            time_embedding: TimeEmbedding::new(vb.clone(), down)?,
            down_path: DownPath::new(vb.clone(), down)?,
            up_blocks,
            conv_norm_out: ops::group_norm(down.norm_num_groups, channels[0], down.norm_eps, vb.pp("conv_norm_out"))?,
            conv_out: ops::conv2d_layer(channels[0], config.out_channels, 3, conv3, vb.pp("conv_out"))?,
            center_input_sample: config.center_input_sample,
            transformer_blocks: 0,
        };
        let mut blocks = 0;
        for transformer in unet.transformers_in_execution_order() {
            transformer.number_blocks(&mut blocks);
        }
        unet.transformer_blocks = blocks;
        Ok(unet)
    }

    /// Its spatial transformers in execution order: down blocks, mid block, up blocks.
    fn transformers_in_execution_order(&mut self) -> Vec<&mut SpatialTransformer> {
        let (down, mid) = self.down_path.transformers_mut();
        down.into_iter().chain(mid).chain(self.up_blocks.iter_mut().flat_map(UpBlock::transformers_mut)).collect()
    }

    /// Its cross-attention layers' Expression Adapter slots, in diffusers' attention-processor
    /// order: down blocks, up blocks, then the mid block.
    fn expression_slots(&mut self) -> Vec<&mut Option<ExpressionAttention>> {
        let (down, mid) = self.down_path.transformers_mut();
        let up = self.up_blocks.iter_mut().flat_map(UpBlock::transformers_mut);
        down.into_iter().chain(up).chain(mid).flat_map(SpatialTransformer::expression_slots).collect()
    }

    /// Keeps a LoRA's pairs beside the attention projections they change (by module path),
    /// switched on per call; refuses pairs for any other layer, naming a few.
    pub fn attach_side_paths(&mut self, mut paths: HashMap<String, LoraSidePath>) -> Result<()> {
        for transformer in self.transformers_in_execution_order() {
            transformer.attach_side_paths(&mut paths);
        }
        if !paths.is_empty() {
            let mut left: Vec<&String> = paths.keys().collect();
            left.sort();
            let examples = left.iter().take(3).map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
            candle_core::bail!("{} of its layers are not attention projections, e.g. {examples}", left.len());
        }
        Ok(())
    }

    /// The Reference Adapter's bank for `latents` `(1, C, h, w)` (a reference image's, times the
    /// VAE's scaling factor) under `context` `(1, 77, D)`: one pass at timestep 0, side-path
    /// LoRAs off.
    pub fn reference_bank(&self, latents: &Tensor, context: &Tensor) -> Result<ReferenceBank> {
        let recorder = BankRecorder::new(self.transformer_blocks);
        self.forward(latents, 0.0, &Conditioning { reference: Some(ReferenceCall::Record(&recorder)), ..Conditioning::context(context) })?;
        recorder.finish()
    }

    /// How many cross-attention layers an Expression Adapter attaches to.
    pub fn cross_attention_layers(&mut self) -> usize {
        self.expression_slots().len()
    }

    /// Attaches an Expression Adapter's per-layer projections (in attention-processor order).
    pub fn attach_expression_adapter(&mut self, layers: Vec<ExpressionAttention>) -> Result<()> {
        let mut slots = self.expression_slots();
        if slots.len() != layers.len() {
            candle_core::bail!("{} adapter layers for {} cross-attention layers", layers.len(), slots.len());
        }
        for (slot, layer) in slots.iter_mut().zip(layers) {
            **slot = Some(layer);
        }
        Ok(())
    }

    /// Predicts the noise in `sample` `(B, C, h, w)` at `timestep` under `conditioning`, whose
    /// context has the same batch. Height and width must be multiples of
    /// [`UNetConfig::latent_multiple`].
    pub fn forward(&self, sample: &Tensor, timestep: f64, conditioning: &Conditioning) -> Result<Tensor> {
        let xs = if self.center_input_sample { ((sample * 2.0)? - 1.0)? } else { sample.clone() };
        let temb = self.time_embedding.forward(timestep, &xs)?;
        let DownPathOutput { mid, mut skips } = self.down_path.forward(self.down_path.conv_in(&xs)?, &temb, conditioning)?;
        let mut xs = mid;
        if let Some(control) = conditioning.control {
            if control.down.len() != skips.len() {
                candle_core::bail!("{} ControlNet residuals for {} skips", control.down.len(), skips.len());
            }
            for (skip, residual) in skips.iter_mut().zip(&control.down) {
                *skip = (&*skip + residual)?;
            }
            xs = (xs + &control.mid)?;
        }
        for block in &self.up_blocks {
            let block_skips = skips.split_off(skips.len() - block.num_skips());
            xs = block.forward(&xs, &block_skips, &temb, conditioning)?;
        }
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&xs)?)
    }
}
