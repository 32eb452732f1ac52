//! The Expression Adapter: an IP-Adapter-style decoupled cross-attention. A projection turns the
//! 55 FLAME values into tokens; every cross-attention layer of the UNet gets its own key and value
//! projections of those tokens and adds `scale · Attention(Q, K_ip, V_ip)` to its output
//! (RECIPE.md, "Expression Adapter"). The projection takes the form diffusers would choose from
//! the state dict's key names.

use std::collections::HashMap;

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear};

/// The key and value projections of one cross-attention layer's expression tokens.
#[derive(Clone)]
pub struct ExpressionAttention {
    pub to_k: Linear,
    pub to_v: Linear,
}

/// The projection from expression values to tokens.
enum Projection {
    /// diffusers' `ImageProjection`: a linear map to 4 tokens, then LayerNorm.
    Linear { proj: Linear, norm: LayerNorm, tokens: usize },
    /// diffusers' `IPAdapterFullImageProjection`: linear, GELU, linear, LayerNorm; one token.
    Mlp { first: Linear, second: Linear, norm: LayerNorm },
    /// diffusers' `IPAdapterFaceIDImageProjection`: linear, GELU, linear to several tokens,
    /// LayerNorm.
    MlpTokens { first: Linear, second: Linear, norm: LayerNorm, tokens: usize },
}

/// The adapter: its projection and one [`ExpressionAttention`] per cross-attention layer, in the
/// UNet's attention-processor order (down blocks, up blocks, then the mid block).
pub struct ExpressionAdapter {
    projection: Projection,
    pub layers: Vec<ExpressionAttention>,
}

fn linear(tensors: &HashMap<String, Tensor>, name: &str, bias: bool) -> std::result::Result<Linear, String> {
    let weight = tensors.get(&format!("{name}.weight")).ok_or_else(|| format!("no {name}.weight"))?.clone();
    let bias = if bias { Some(tensors.get(&format!("{name}.bias")).ok_or_else(|| format!("no {name}.bias"))?.clone()) } else { None };
    Ok(Linear::new(weight, bias))
}

fn layer_norm(tensors: &HashMap<String, Tensor>, name: &str) -> std::result::Result<LayerNorm, String> {
    let weight = tensors.get(&format!("{name}.weight")).ok_or_else(|| format!("no {name}.weight"))?.clone();
    let bias = tensors.get(&format!("{name}.bias")).ok_or_else(|| format!("no {name}.bias"))?.clone();
    Ok(LayerNorm::new(weight, bias, 1e-5))
}

fn rows(tensors: &HashMap<String, Tensor>, name: &str) -> std::result::Result<usize, String> {
    tensors.get(name).ok_or_else(|| format!("no {name}"))?.dim(0).map_err(|e| e.to_string())
}

impl ExpressionAdapter {
    /// Builds the adapter from its two state dicts (`image_proj`, `ip_adapter`), for a UNet
    /// with `cross_attention_layers` cross-attention layers. An unknown projection is refused
    /// naming its keys.
    pub fn new(
        image_proj: &HashMap<String, Tensor>,
        ip_adapter: &HashMap<String, Tensor>,
        cross_attention_layers: usize,
    ) -> std::result::Result<Self, String> {
        let has = |key: &str| image_proj.contains_key(key);
        let projection = if has("proj.weight") {
            let cross = rows(image_proj, "norm.weight")?;
            let tokens = rows(image_proj, "proj.weight")? / cross;
            Projection::Linear { proj: linear(image_proj, "proj", true)?, norm: layer_norm(image_proj, "norm")?, tokens }
        } else if has("proj.3.weight") {
            Projection::Mlp {
                first: linear(image_proj, "proj.0", true)?,
                second: linear(image_proj, "proj.2", true)?,
                norm: layer_norm(image_proj, "proj.3")?,
            }
        } else if has("norm.weight") && has("proj.0.weight") && !has("perceiver_resampler.proj_in.weight") {
            let tokens = rows(image_proj, "proj.2.weight")? / rows(image_proj, "norm.weight")?;
            Projection::MlpTokens {
                first: linear(image_proj, "proj.0", true)?,
                second: linear(image_proj, "proj.2", true)?,
                norm: layer_norm(image_proj, "norm")?,
                tokens,
            }
        } else {
            let mut keys: Vec<&str> = image_proj.keys().map(String::as_str).collect();
            keys.sort();
            let shown = keys.iter().take(6).copied().collect::<Vec<_>>().join(", ");
            return Err(format!(
                "its image projection (keys {shown}{}) is not one this app knows (a linear map, or diffusers' MLP forms); perceiver resamplers are not supported",
                if keys.len() > 6 { ", …" } else { "" }
            ));
        };
        let layers = (0..cross_attention_layers)
            .map(|i| {
                let k = 2 * i + 1;
                Ok(ExpressionAttention {
                    to_k: linear(ip_adapter, &format!("{k}.to_k_ip"), false)?,
                    to_v: linear(ip_adapter, &format!("{k}.to_v_ip"), false)?,
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        let expected = 2 * cross_attention_layers;
        if ip_adapter.len() != expected {
            return Err(format!(
                "{} attention weights for a UNet whose {cross_attention_layers} cross-attention layers take {expected}",
                ip_adapter.len()
            ));
        }
        Ok(Self { projection, layers })
    }

    /// The tokens for expression vectors `(B, 55)`: `(B, T, cross_attention_dim)`.
    pub fn tokens(&self, values: &Tensor) -> Result<Tensor> {
        match &self.projection {
            Projection::Linear { proj, norm, tokens } => {
                let batch = values.dim(0)?;
                norm.forward(&proj.forward(values)?.reshape((batch, *tokens, ()))?)
            }
            Projection::Mlp { first, second, norm } => norm.forward(&second.forward(&first.forward(values)?.gelu_erf()?)?.unsqueeze(1)?),
            Projection::MlpTokens { first, second, norm, tokens } => {
                let batch = values.dim(0)?;
                let projected = second.forward(&first.forward(values)?.gelu_erf()?)?;
                norm.forward(&projected.reshape((batch, *tokens, projected.dim(D::Minus1)? / tokens))?)
            }
        }
    }
}
