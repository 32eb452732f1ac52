//! LoRAs for the UNet: the low-rank pairs of a file in any of the key layouts diffusers'
//! `load_lora_weights` reads, resolved to the UNet weights they change and merged as
//! `W' = W + scale · (alpha / rank) · up · down` (RECIPE.md, "LoRA"). Convolutions: down keeps the
//! layer's kernel, up is 1×1. The layouts:
//! - kohya / A1111: `lora_unet_<module, dots as underscores>.lora_down.weight`, `.lora_up.weight`,
//!   `.alpha`, with diffusers' block names or the original Stable Diffusion ones
//!   (`input_blocks`, `middle_block`, `output_blocks`);
//! - diffusers: `unet.<module>.lora.down.weight` / `.lora.up.weight` (no alpha: alpha = rank);
//! - PEFT: `unet.<module>.lora_A.weight` / `.lora_B.weight`, alpha in the file's
//!   `lora_adapter_metadata` (`lora_alpha`, `alpha_pattern`), else alpha = rank.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Result, Tensor};

/// What a LoRA needs to know of the UNet it is for: every weight's module and shape, and the
/// structure that maps the original Stable Diffusion block names.
pub struct UNetLayout {
    /// `down_blocks.0.resnets.0.conv1` → the shape of its `.weight`.
    pub weights: HashMap<String, Vec<usize>>,
    pub layers_per_block: usize,
    /// Whether each up block (diffusers order) has spatial transformers.
    pub up_blocks_with_attention: Vec<bool>,
}

impl UNetLayout {
    /// The layout of the UNet whose weights file holds `tensors` (names and shapes).
    pub fn new<'a>(tensors: impl Iterator<Item = (&'a str, &'a [usize])>, config: &super::unet::UNetConfig) -> Self {
        let weights = tensors.filter_map(|(name, shape)| Some((name.strip_suffix(".weight")?.to_string(), shape.to_vec()))).collect();
        UNetLayout {
            weights,
            layers_per_block: config.down.layers_per_block,
            up_blocks_with_attention: config.up_block_types.iter().map(|t| t == "CrossAttnUpBlock2D").collect(),
        }
    }
}

/// One low-rank pair, ready to merge.
struct LowRank {
    /// `(rank, in·kh·kw)`, f32.
    down: Tensor,
    /// `(out, rank)`, f32.
    up: Tensor,
    /// The user's scale × alpha / rank.
    scale: f64,
}

/// The deltas of one or more LoRAs, by the UNet weight they change.
#[derive(Default)]
pub struct LoraDeltas {
    by_weight: HashMap<String, Vec<LowRank>>,
}

/// What adding a LoRA file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// UNet weights it changes.
    pub weights: usize,
    /// Its tensors for a text encoder, which Arc2Face's own encoder does not take: left out.
    pub text_encoder_tensors: usize,
}

/// One pair as found in a file, before it is resolved to a UNet weight.
#[derive(Default)]
struct Pair {
    down: Option<Tensor>,
    up: Option<Tensor>,
    alpha: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layout {
    Kohya,
    Diffusers,
    Peft,
}

impl LoraDeltas {
    pub fn is_empty(&self) -> bool {
        self.by_weight.is_empty()
    }

    /// Whether `weight` (a full tensor name, `….weight`) has deltas.
    pub fn changes(&self, weight: &str) -> bool {
        self.by_weight.contains_key(weight)
    }

    /// Adds one file's pairs at `user_scale`. Refuses a file with keys that name nothing in this
    /// UNet (or nothing at all), naming a few of them, and pairs whose shapes do not fit.
    pub fn add(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        metadata: &HashMap<String, String>,
        user_scale: f64,
        layout: &UNetLayout,
    ) -> std::result::Result<Added, String> {
        let mut pairs: BTreeMap<(String, Layout), Pair> = BTreeMap::new();
        let mut text_encoder_tensors = 0;
        let mut unknown_keys = Vec::new();
        for (key, tensor) in tensors {
            let Some((layout_kind, module, part)) = parse_key(key) else {
                if is_text_encoder_key(key) {
                    text_encoder_tensors += 1;
                } else {
                    unknown_keys.push(key.clone());
                }
                continue;
            };
            let pair = pairs.entry((module, layout_kind)).or_default();
            match part {
                Part::Down => pair.down = Some(tensor.clone()),
                Part::Up => pair.up = Some(tensor.clone()),
                Part::Alpha => {
                    let alpha = tensor.to_dtype(DType::F64).and_then(|t| t.flatten_all()?.get(0)?.to_scalar::<f64>());
                    pair.alpha = Some(alpha.map_err(|e| format!("{key}: {e}"))?);
                }
            }
        }
        // kohya writes dots as underscores: look modules up by that form.
        let underscored: HashMap<String, &String> = layout.weights.keys().map(|m| (m.replace('.', "_"), m)).collect();
        let peft = PeftAlphas::from_metadata(metadata);
        let mut resolved: Vec<(String, LowRank)> = Vec::new();
        for ((module, kind), pair) in pairs {
            let target = match kind {
                Layout::Kohya => {
                    let name = sd_to_diffusers(&module, layout).unwrap_or_else(|| module.clone());
                    underscored.get(&name).map(|m| (*m).clone())
                }
                Layout::Diffusers | Layout::Peft => layout.weights.contains_key(&module).then(|| module.clone()),
            };
            let Some(target) = target else {
                unknown_keys.push(format!("{module} ({kind:?} layout)"));
                continue;
            };
            let (Some(down), Some(up)) = (pair.down, pair.up) else {
                return Err(format!("{module}: a LoRA pair without both its down and up weights"));
            };
            let rank = down.dim(0).map_err(|e| e.to_string())?;
            let alpha = match kind {
                Layout::Peft => peft.alpha(&module),
                Layout::Kohya => pair.alpha,
                // diffusers' own layout carries no alpha.
                Layout::Diffusers => None,
            }
            .unwrap_or(rank as f64);
            let shape = &layout.weights[&target];
            let low_rank = low_rank(&down, &up, shape, user_scale * alpha / rank as f64).map_err(|e| format!("{module}: {e}"))?;
            resolved.push((target, low_rank));
        }
        if !unknown_keys.is_empty() {
            unknown_keys.sort();
            let examples = unknown_keys.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
            return Err(format!("{} of its weights name nothing in this UNet, e.g. {examples}", unknown_keys.len()));
        }
        if resolved.is_empty() {
            return Err(if text_encoder_tensors > 0 {
                "it only changes a text encoder, which Arc2Face replaces with its own; nothing for the UNet".into()
            } else {
                "no LoRA weights in it".into()
            });
        }
        let weights = resolved.len();
        for (target, low_rank) in resolved {
            self.by_weight.entry(format!("{target}.weight")).or_default().push(low_rank);
        }
        Ok(Added { weights, text_encoder_tensors })
    }

    /// The pairs as side paths by module (`….attn1.to_q`), in `dtype` on `device`, for layers
    /// that keep a LoRA beside their weights; a module may have one pair.
    pub fn into_side_paths(self, dtype: DType, device: &candle_core::Device) -> std::result::Result<HashMap<String, LoraSidePath>, String> {
        let mut paths = HashMap::new();
        for (weight, mut pairs) in self.by_weight {
            let module = weight.strip_suffix(".weight").unwrap_or(&weight).to_string();
            let (Some(pair), None) = (pairs.pop(), pairs.pop()) else {
                return Err(format!("{module}: more than one low-rank pair"));
            };
            let convert = |t: &Tensor| t.to_dtype(dtype).and_then(|t| t.to_device(device)).map_err(|e| e.to_string());
            paths.insert(
                module,
                LoraSidePath {
                    down_t: convert(&pair.down.t().map_err(|e| e.to_string())?)?,
                    up_t: convert(&pair.up.t().map_err(|e| e.to_string())?)?,
                    scale: pair.scale,
                },
            );
        }
        Ok(paths)
    }

    /// `base` (f32) with every delta for `weight` added.
    pub fn apply(&self, weight: &str, base: &Tensor) -> Result<Tensor> {
        let mut merged = base.clone();
        for pair in self.by_weight.get(weight).into_iter().flatten() {
            let delta = pair.up.matmul(&pair.down)?.reshape(base.shape())?;
            merged = (merged + (delta * pair.scale)?)?;
        }
        Ok(merged)
    }
}

/// A LoRA kept beside a linear layer: `xs → scale · (xs · downᵀ) · upᵀ`, added to the layer's
/// output at a strength the call chooses. diffusers' unfused PEFT layers compute the same.
pub struct LoraSidePath {
    /// `(in, rank)`.
    down_t: Tensor,
    /// `(rank, out)`.
    up_t: Tensor,
    /// alpha / rank.
    scale: f64,
}

impl LoraSidePath {
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.broadcast_matmul(&self.down_t)?.broadcast_matmul(&self.up_t)? * self.scale
    }
}

/// A pair's tensors in matrix form, checked against the weight they change.
fn low_rank(down: &Tensor, up: &Tensor, shape: &[usize], scale: f64) -> Result<LowRank> {
    let rank = down.dim(0)?;
    let down = down.to_dtype(DType::F32)?.flatten_from(1)?;
    let up = up.to_dtype(DType::F32)?.flatten_from(1)?;
    let (out, inputs) = (shape[0], shape[1..].iter().product::<usize>());
    if up.dims() != [out, rank] || down.dims() != [rank, inputs] {
        candle_core::bail!("shapes {:?} × {:?} do not fit the weight's {shape:?}", up.dims(), down.dims());
    }
    Ok(LowRank { down, up, scale })
}

#[derive(Debug, Clone, Copy)]
enum Part {
    Down,
    Up,
    Alpha,
}

/// The layout, module and part a key names, for the UNet's keys of any layout.
fn parse_key(key: &str) -> Option<(Layout, String, Part)> {
    if let Some(rest) = key.strip_prefix("lora_unet_") {
        let (module, part) = rest.split_once('.')?;
        let part = match part {
            "lora_down.weight" => Part::Down,
            "lora_up.weight" => Part::Up,
            "alpha" => Part::Alpha,
            _ => return None,
        };
        return Some((Layout::Kohya, module.to_string(), part));
    }
    let rest = key.strip_prefix("unet.").or_else(|| key.strip_prefix("base_model.model."))?;
    const SUFFIXES: [(&str, Layout, Part); 8] = [
        (".lora.down.weight", Layout::Diffusers, Part::Down),
        (".lora.up.weight", Layout::Diffusers, Part::Up),
        (".lora_linear_layer.down.weight", Layout::Diffusers, Part::Down),
        (".lora_linear_layer.up.weight", Layout::Diffusers, Part::Up),
        (".lora_A.weight", Layout::Peft, Part::Down),
        (".lora_B.weight", Layout::Peft, Part::Up),
        (".lora_A.default.weight", Layout::Peft, Part::Down),
        (".lora_B.default.weight", Layout::Peft, Part::Up),
    ];
    SUFFIXES.into_iter().find_map(|(suffix, layout, part)| Some((layout, attention_processor_module(rest.strip_suffix(suffix)?), part)))
}

/// diffusers' oldest layout keeps attention LoRAs on the processor: `attn1.processor.to_q_lora`
/// is `attn1.to_q` (and `to_out_lora` is `to_out.0`).
fn attention_processor_module(module: &str) -> String {
    for (processor, linear) in [("to_q_lora", "to_q"), ("to_k_lora", "to_k"), ("to_v_lora", "to_v"), ("to_out_lora", "to_out.0")] {
        if let Some(attention) = module.strip_suffix(&format!(".processor.{processor}")) {
            return format!("{attention}.{linear}");
        }
    }
    module.to_string()
}

fn is_text_encoder_key(key: &str) -> bool {
    key.starts_with("lora_te") || key.starts_with("text_encoder.") || key.starts_with("text_encoder_2.")
}

/// PEFT's alphas from diffusers' `lora_adapter_metadata`: `unet.lora_alpha`, and per-module
/// overrides in `unet.alpha_pattern` (a module-name suffix → alpha).
struct PeftAlphas {
    alpha: Option<f64>,
    patterns: Vec<(String, f64)>,
}

impl PeftAlphas {
    fn from_metadata(metadata: &HashMap<String, String>) -> Self {
        let config: serde_json::Value =
            metadata.get("lora_adapter_metadata").and_then(|json| serde_json::from_str(json).ok()).unwrap_or_default();
        let field = |name: &str| config.get(format!("unet.{name}")).or_else(|| config.get(name));
        let alpha = field("lora_alpha").and_then(|a| a.as_f64());
        let patterns = field("alpha_pattern")
            .and_then(|p| p.as_object())
            .map(|p| p.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect())
            .unwrap_or_default();
        Self { alpha, patterns }
    }

    fn alpha(&self, module: &str) -> Option<f64> {
        self.patterns.iter().find(|(pattern, _)| module.ends_with(pattern.as_str())).map(|(_, a)| *a).or(self.alpha)
    }
}

/// An original Stable Diffusion module name (underscored, as kohya writes it) in diffusers'
/// naming (underscored too); `None` when it is not one.
fn sd_to_diffusers(name: &str, layout: &UNetLayout) -> Option<String> {
    let l = layout.layers_per_block;
    let (block, rest) = if let Some(rest) = name.strip_prefix("input_blocks_") {
        let (n, rest) = leading_index(rest)?;
        let (sub, rest) = leading_index(rest)?;
        if n == 0 {
            return Some("conv_in".into());
        }
        let (b, k) = ((n - 1) / (l + 1), (n - 1) % (l + 1));
        match (k == l, sub) {
            (true, _) => (format!("down_blocks_{b}_downsamplers_0"), "conv"),
            (false, 0) => (format!("down_blocks_{b}_resnets_{k}"), rest),
            (false, _) => (format!("down_blocks_{b}_attentions_{k}"), rest),
        }
    } else if let Some(rest) = name.strip_prefix("middle_block_") {
        let (sub, rest) = leading_index(rest)?;
        let block = match sub {
            0 => "mid_block_resnets_0",
            1 => "mid_block_attentions_0",
            _ => "mid_block_resnets_1",
        };
        (block.to_string(), rest)
    } else if let Some(rest) = name.strip_prefix("output_blocks_") {
        let (n, rest) = leading_index(rest)?;
        let (sub, rest) = leading_index(rest)?;
        let (b, k) = (n / (l + 1), n % (l + 1));
        let has_attention = layout.up_blocks_with_attention.get(b).copied().unwrap_or(false);
        match (sub, has_attention) {
            (0, _) => (format!("up_blocks_{b}_resnets_{k}"), rest),
            (1, true) => (format!("up_blocks_{b}_attentions_{k}"), rest),
            _ => (format!("up_blocks_{b}_upsamplers_0"), "conv"),
        }
    } else {
        return None;
    };
    let rest = match rest {
        "in_layers_0" => "norm1",
        "in_layers_2" => "conv1",
        "emb_layers_1" => "time_emb_proj",
        "out_layers_0" => "norm2",
        "out_layers_3" => "conv2",
        "skip_connection" => "conv_shortcut",
        other => other,
    };
    Some(format!("{block}_{rest}"))
}

/// `"12_rest"` → (12, "rest").
fn leading_index(text: &str) -> Option<(usize, &str)> {
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let index = text[..digits].parse().ok()?;
    Some((index, text[digits..].strip_prefix('_').unwrap_or(&text[digits..])))
}
