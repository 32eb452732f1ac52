//! The UNet's spatial transformer (diffusers' `Transformer2DModel` as SD1.5 uses it): group
//! norm, projection in, transformer blocks of self-attention, cross-attention and a GEGLU
//! feed-forward, projection out, residual.
//!
//! Forked from candle-transformers' `stable_diffusion::attention` because its GEGLU uses the
//! tanh approximation of GELU where diffusers uses the exact (erf) one, a difference that shows
//! at 1e-4 in the final latents. Its norms, convolutions and attention run on our CPU kernels
//! (`ops`), which take the heads side by side as the projections leave them.

use std::collections::HashMap;

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::expression_adapter::ExpressionAttention;
use super::lora::LoraSidePath;
use super::ops::{self, Conv2d, GroupNorm};
use super::reference_adapter::ReferenceCall;
use super::unet::{Conditioning, ExpressionTokens};

/// A linear layer with, optionally, a LoRA beside it rather than merged into it (the Reference
/// Adapter's): it counts at each call's strength, and not at all at 0.
struct AdaptedLinear {
    linear: Linear,
    side_path: Option<LoraSidePath>,
}

impl AdaptedLinear {
    fn new(linear: Linear) -> Self {
        Self { linear, side_path: None }
    }

    fn forward(&self, xs: &Tensor, lora_strength: f64) -> Result<Tensor> {
        let out = self.linear.forward(xs)?;
        match &self.side_path {
            Some(side_path) if lora_strength != 0.0 => out + (side_path.forward(xs)? * lora_strength)?,
            _ => Ok(out),
        }
    }
}

struct Attention {
    /// Its module path in the checkpoint (`down_blocks.0.attentions.0.transformer_blocks.0.attn1`).
    name: String,
    to_q: AdaptedLinear,
    to_k: AdaptedLinear,
    to_v: AdaptedLinear,
    to_out: AdaptedLinear,
    heads: usize,
    /// The Expression Adapter's projections, attached to cross-attention layers.
    expression: Option<ExpressionAttention>,
}

impl Attention {
    fn new(vb: VarBuilder, query_dim: usize, context_dim: usize, heads: usize, head_dim: usize) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            name: vb.prefix(),
            to_q: AdaptedLinear::new(candle_nn::linear_no_bias(query_dim, inner, vb.pp("to_q"))?),
            to_k: AdaptedLinear::new(candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_k"))?),
            to_v: AdaptedLinear::new(candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_v"))?),
            to_out: AdaptedLinear::new(candle_nn::linear(inner, query_dim, vb.pp("to_out.0"))?),
            heads,
            expression: None,
        })
    }

    /// Takes the side paths for its projections out of `paths` (keyed by module path).
    fn attach_side_paths(&mut self, paths: &mut HashMap<String, LoraSidePath>) {
        for (suffix, layer) in
            [("to_q", &mut self.to_q), ("to_k", &mut self.to_k), ("to_v", &mut self.to_v), ("to_out.0", &mut self.to_out)]
        {
            if let Some(path) = paths.remove(&format!("{}.{suffix}", self.name)) {
                layer.side_path = Some(path);
            }
        }
    }

    /// Attends from `xs` `(B, N, C)` to `context` `(B, M, C')`, plus (decoupled, with its own
    /// softmax) to the expression tokens when the adapter is attached and given them; side-path
    /// LoRAs count at `lora_strength`.
    fn forward(&self, xs: &Tensor, context: &Tensor, expression: Option<ExpressionTokens>, lora_strength: f64) -> Result<Tensor> {
        let q = self.to_q.forward(xs, lora_strength)?;
        let k = self.to_k.forward(context, lora_strength)?;
        let v = self.to_v.forward(context, lora_strength)?;
        let mut out = ops::attention(&q, &k, &v, self.heads)?;
        if let (Some(adapter), Some(tokens)) = (&self.expression, expression)
            && tokens.scale != 0.0
        {
            let k = adapter.to_k.forward(tokens.tokens)?;
            let v = adapter.to_v.forward(tokens.tokens)?;
            out = (out + (ops::attention(&q, &k, &v, self.heads)? * tokens.scale)?)?;
        }
        self.to_out.forward(&out, lora_strength)
    }
}

/// GEGLU feed-forward: `proj` to twice the inner width, `value · gelu(gate)`, then back.
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self { proj: candle_nn::linear(dim, inner * 2, vb.pp("net.0.proj"))?, out: candle_nn::linear(inner, dim, vb.pp("net.2"))? })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.out.forward(&ops::geglu(&self.proj.forward(xs)?)?)
    }
}

struct TransformerBlock {
    /// Its place in the UNet's execution order (down, mid, up): its entry in a reference bank.
    bank_index: usize,
    norm1: LayerNorm,
    self_attention: Attention,
    norm2: LayerNorm,
    cross_attention: Attention,
    norm3: LayerNorm,
    feed_forward: FeedForward,
}

impl TransformerBlock {
    fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        let head_dim = dim / heads;
        Ok(Self {
            bank_index: 0,
            norm1: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            self_attention: Attention::new(vb.pp("attn1"), dim, dim, heads, head_dim)?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            cross_attention: Attention::new(vb.pp("attn2"), dim, context_dim, heads, head_dim)?,
            norm3: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            feed_forward: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, xs: &Tensor, conditioning: &Conditioning) -> Result<Tensor> {
        let normed = self.norm1.forward(xs)?;
        let lora = conditioning.reference.map_or(0.0, |r| r.lora_strength());
        let attended = match conditioning.reference {
            None => self.self_attention.forward(&normed, &normed, None, lora)?,
            Some(ReferenceCall::Record(recorder)) => {
                recorder.record(self.bank_index, &normed);
                self.self_attention.forward(&normed, &normed, None, lora)?
            }
            Some(ReferenceCall::Attend { bank, guided, .. }) => {
                // Keys and values from the tokens and the reference's, side by side; under
                // guidance only the conditional half (the second) sees the reference.
                let with_reference = |rows: &Tensor| -> Result<Tensor> {
                    let memory = bank.entry(self.bank_index, rows.dim(0)?)?;
                    self.self_attention.forward(rows, &Tensor::cat(&[rows, &memory], 1)?, None, lora)
                };
                let batch = normed.dim(0)?;
                if guided && batch >= 2 {
                    let (unconditional, conditional) = (normed.narrow(0, 0, batch / 2)?, normed.narrow(0, batch / 2, batch - batch / 2)?);
                    let plain = self.self_attention.forward(&unconditional, &unconditional, None, lora)?;
                    Tensor::cat(&[&plain, &with_reference(&conditional)?], 0)?
                } else {
                    with_reference(&normed)?
                }
            }
        };
        let xs = (attended + xs)?;
        let xs = (self.cross_attention.forward(&self.norm2.forward(&xs)?, conditioning.context, conditioning.expression, lora)? + xs)?;
        self.feed_forward.forward(&self.norm3.forward(&xs)?)? + xs
    }
}

/// A 1×1 convolution (SD1.5) or a linear layer (later SD versions) on the channels.
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// Settings of one spatial transformer.
#[derive(Debug, Clone, Copy)]
pub struct TransformerSettings {
    pub channels: usize,
    pub heads: usize,
    pub depth: usize,
    pub norm_num_groups: usize,
    pub context_dim: usize,
    pub use_linear_projection: bool,
}

pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl SpatialTransformer {
    pub fn new(vb: VarBuilder, s: TransformerSettings) -> Result<Self> {
        let c = s.channels;
        let projection = |name: &str| -> Result<Projection> {
            Ok(if s.use_linear_projection {
                Projection::Linear(candle_nn::linear(c, c, vb.pp(name))?)
            } else {
                Projection::Conv(ops::conv2d_layer(c, c, 1, Default::default(), vb.pp(name))?)
            })
        };
        let blocks = (0..s.depth)
            .map(|i| TransformerBlock::new(vb.pp(format!("transformer_blocks.{i}")), c, s.context_dim, s.heads))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: ops::group_norm(s.norm_num_groups, c, 1e-6, vb.pp("norm"))?,
            proj_in: projection("proj_in")?,
            blocks,
            proj_out: projection("proj_out")?,
        })
    }

    /// Where the Expression Adapter attaches: each transformer block's cross-attention.
    pub fn expression_slots(&mut self) -> impl Iterator<Item = &mut Option<ExpressionAttention>> {
        self.blocks.iter_mut().map(|block| &mut block.cross_attention.expression)
    }

    /// Numbers its transformer blocks from `next` on (their entries in a reference bank).
    pub fn number_blocks(&mut self, next: &mut usize) {
        for block in &mut self.blocks {
            block.bank_index = *next;
            *next += 1;
        }
    }

    /// Takes the side paths for its attention projections out of `paths`.
    pub fn attach_side_paths(&mut self, paths: &mut HashMap<String, LoraSidePath>) {
        for block in &mut self.blocks {
            block.self_attention.attach_side_paths(paths);
            block.cross_attention.attach_side_paths(paths);
        }
    }

    /// `xs` `(B, C, H, W)`; the conditioning's context `(B, 77, context_dim)`.
    pub fn forward(&self, xs: &Tensor, conditioning: &Conditioning) -> Result<Tensor> {
        let (batch, channels, height, width) = xs.dims4()?;
        let to_tokens = |t: Tensor| t.permute((0, 2, 3, 1))?.reshape((batch, height * width, channels));
        let to_image = |t: Tensor| t.reshape((batch, height, width, channels))?.permute((0, 3, 1, 2))?.contiguous();
        let normed = self.norm.forward(xs)?;
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(&normed)?)?,
            Projection::Linear(linear) => linear.forward(&to_tokens(normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, conditioning)?;
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(tokens)?)?,
            Projection::Linear(linear) => to_image(linear.forward(&tokens)?)?,
        };
        out + xs
    }
}
