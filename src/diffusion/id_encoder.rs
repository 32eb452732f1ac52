//! The Arc2Face ID encoder: a CLIP text transformer whose input is token embeddings, so that the
//! ArcFace vector can take the place of the `id` token (RECIPE.md, "Identity encoder").
//!
//! Forked from candle-transformers' `stable_diffusion::clip` because that model only takes token
//! ids and keeps its layers private. Weights load from the transformers checkpoint's `text_model.*`
//! keys; sizes come from the transformers `config.json`.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// `photo of a id person`, padded with end-of-text tokens to 77.
const CONDITIONAL_PREFIX: [u32; 7] = [49406, 1125, 539, 320, 1014, 2533, 49407];
/// Where the `id` token (1014) stands; its embedding is replaced by the ArcFace vector.
const ID_TOKEN_POSITION: usize = 4;
const START_OF_TEXT: u32 = 49406;
const END_OF_TEXT: u32 = 49407;
/// Both prompts are 77 tokens long, as the SD1.5 tokenizer pads them.
pub const SEQUENCE_LENGTH: usize = 77;

/// The fields of a transformers `CLIPTextConfig` that the encoder uses.
#[derive(Debug, Clone, Deserialize)]
pub struct IdEncoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
}

fn default_hidden_act() -> String {
    "quick_gelu".into()
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}

impl IdEncoderConfig {
    /// Says what is wrong when this encoder cannot run Arc2Face's prompts.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.vocab_size <= END_OF_TEXT as usize {
            return Err(format!("vocab_size {} is smaller than CLIP's 49408", self.vocab_size));
        }
        if self.max_position_embeddings < SEQUENCE_LENGTH {
            return Err(format!("max_position_embeddings {} < 77", self.max_position_embeddings));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!("hidden_size {} is not divisible by num_attention_heads {}", self.hidden_size, self.num_attention_heads));
        }
        Activation::from_name(&self.hidden_act).map(|_| ())
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
}

impl Activation {
    fn from_name(name: &str) -> std::result::Result<Self, String> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => Err(format!("hidden_act {other:?} is not supported")),
        }
    }

    fn forward(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Activation::Gelu => xs.gelu_erf(),
        }
    }
}

struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
}

impl SelfAttention {
    fn new(vb: VarBuilder, c: &IdEncoderConfig) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            q_proj: candle_nn::linear(h, h, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(h, h, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(h, h, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(h, h, vb.pp("out_proj"))?,
            num_heads: c.num_attention_heads,
        })
    }

    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let (batch, seq, hidden) = xs.dims3()?;
        let head_dim = hidden / self.num_heads;
        let heads = |t: Tensor| t.reshape((batch, seq, self.num_heads, head_dim))?.transpose(1, 2)?.contiguous();
        let q = heads((self.q_proj.forward(xs)? * (head_dim as f64).powf(-0.5))?)?;
        let k = heads(self.k_proj.forward(xs)?)?;
        let v = heads(self.v_proj.forward(xs)?)?;
        // Softmax in f32 whatever the model dtype.
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?.broadcast_add(causal_mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((batch, seq, hidden))?;
        self.out_proj.forward(&out)
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, c: &IdEncoderConfig, activation: Activation) -> Result<Self> {
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        Ok(Self {
            layer_norm1: candle_nn::layer_norm(h, eps, vb.pp("layer_norm1"))?,
            self_attn: SelfAttention::new(vb.pp("self_attn"), c)?,
            layer_norm2: candle_nn::layer_norm(h, eps, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(h, c.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(c.intermediate_size, h, vb.pp("mlp.fc2"))?,
            activation,
        })
    }

    /// Pre-LN transformer layer.
    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let attended = self.self_attn.forward(&self.layer_norm1.forward(xs)?, causal_mask)?;
        let xs = (xs + attended)?;
        let hidden = self.activation.forward(&self.fc1.forward(&self.layer_norm2.forward(&xs)?)?)?;
        xs + self.fc2.forward(&hidden)?
    }
}

pub struct IdEncoder {
    token_embedding: Embedding,
    /// The first 77 learned position embeddings.
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    /// 0 on and below the diagonal, −∞ above: each token sees only those before it.
    causal_mask: Tensor,
    hidden_size: usize,
}

impl IdEncoder {
    /// Builds the encoder from a `CLIPTextModel` checkpoint (`vb` at its root: keys `text_model.*`).
    pub fn new(vb: VarBuilder, config: &IdEncoderConfig) -> Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let activation = Activation::from_name(&config.hidden_act).map_err(candle_core::Error::msg)?;
        let vb = vb.pp("text_model");
        let h = config.hidden_size;
        let token_embedding = candle_nn::embedding(config.vocab_size, h, vb.pp("embeddings.token_embedding"))?;
        let position_embedding =
            vb.pp("embeddings.position_embedding").get((config.max_position_embeddings, h), "weight")?.narrow(0, 0, SEQUENCE_LENGTH)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(vb.pp(format!("encoder.layers.{i}")), config, activation))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = candle_nn::layer_norm(h, config.layer_norm_eps, vb.pp("final_layer_norm"))?;
        let causal_mask = causal_mask(SEQUENCE_LENGTH, vb.device())?;
        Ok(Self { token_embedding, position_embedding, layers, final_layer_norm, causal_mask, hidden_size: h })
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// The conditional prompt embedding `(1, 77, hidden)` for an identity vector: the `id`
    /// token's embedding is replaced by the L2-normalised vector, zero-padded to `hidden`.
    /// The caller checks that the vector is finite, non-zero and no longer than `hidden`.
    pub fn encode_identity(&self, identity: &[f32]) -> Result<Tensor> {
        let ids = pad_to_sequence(&CONDITIONAL_PREFIX);
        let tokens = self.token_embedding.forward(&Tensor::new(ids.as_slice(), self.device())?)?;
        let norm = crate::l2_norm(identity);
        let mut id_row: Vec<f32> = identity.iter().map(|v| v / norm).collect();
        id_row.resize(self.hidden_size, 0.0);
        let id_row = Tensor::from_vec(id_row, (1, self.hidden_size), self.device())?.to_dtype(tokens.dtype())?;
        let tokens = Tensor::cat(
            &[
                &tokens.narrow(0, 0, ID_TOKEN_POSITION)?,
                &id_row,
                &tokens.narrow(0, ID_TOKEN_POSITION + 1, SEQUENCE_LENGTH - ID_TOKEN_POSITION - 1)?,
            ],
            0,
        )?;
        self.encode_token_embeddings(&tokens)
    }

    /// The unconditional prompt embedding `(1, 77, hidden)`: the empty prompt.
    pub fn encode_unconditional(&self) -> Result<Tensor> {
        let ids = pad_to_sequence(&[START_OF_TEXT]);
        let tokens = self.token_embedding.forward(&Tensor::new(ids.as_slice(), self.device())?)?;
        self.encode_token_embeddings(&tokens)
    }

    /// Runs the transformer on `(77, hidden)` token embeddings; returns the last hidden state
    /// after the final layer norm, `(1, 77, hidden)`.
    fn encode_token_embeddings(&self, tokens: &Tensor) -> Result<Tensor> {
        let mut xs = (tokens + &self.position_embedding)?.unsqueeze(0)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &self.causal_mask)?;
        }
        self.final_layer_norm.forward(&xs)
    }

    fn device(&self) -> &Device {
        self.position_embedding.device()
    }
}

fn pad_to_sequence(prefix: &[u32]) -> Vec<u32> {
    let mut ids = prefix.to_vec();
    ids.resize(SEQUENCE_LENGTH, END_OF_TEXT);
    ids
}

fn causal_mask(n: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..n).flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (n, n), device)
}
