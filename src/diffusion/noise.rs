//! Noise identical to `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`
//! for float32 tensors of 16 values or more (RECIPE.md, "Sampling"), so that a seed means the same
//! image here as in diffusers with a CPU generator, on every device. A generator keeps its
//! stream: samplers that add noise at each step (Euler ancestral, LCM) continue drawing from the
//! generator that drew the image's initial latents, as diffusers does.
//!
//! torch draws one 24-bit uniform per value from mt19937, then turns each block of 16 into normals
//! with Box–Muller (the first 8 as radii, the last 8 as angles). When the count is not a multiple
//! of 16, the last 16 positions are redrawn from 16 fresh uniforms.

use candle_core::{Device, Result, Shape, Tensor};
use rand_mt::Mt;

/// The smallest tensor torch fills this way; smaller ones take another path that we do not need.
pub const MIN_VALUES: usize = 16;

/// torch's CPU generator, as far as `torch.randn` of float32 tensors uses it.
pub struct TorchGenerator {
    mt: Mt,
}

impl TorchGenerator {
    /// `torch.Generator("cpu").manual_seed(seed)`: mt19937 seeded with the low 32 bits.
    pub fn new(seed: u64) -> Self {
        Self { mt: Mt::new(seed as u32) }
    }

    /// The next `n` standard normal values; `None` when `n < MIN_VALUES` (latents are always
    /// larger).
    pub fn randn(&mut self, n: usize) -> Option<Vec<f32>> {
        if n < MIN_VALUES {
            return None;
        }
        let mut out: Vec<f32> = (0..n).map(|_| self.uniform()).collect();
        for block in out.chunks_exact_mut(16) {
            box_muller_16(block);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut out[n - 16..];
            tail.iter_mut().for_each(|v| *v = self.uniform());
            box_muller_16(tail);
        }
        Some(out)
    }

    /// A tensor of the next normal values, on `device`.
    pub fn randn_tensor(&mut self, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let values = self
            .randn(shape.elem_count())
            .ok_or_else(|| candle_core::Error::msg(format!("noise of shape {shape:?} is smaller than {MIN_VALUES} values")))?;
        Tensor::from_vec(values, shape, device)
    }

    fn uniform(&mut self) -> f32 {
        (self.mt.next_u32() & 0xFF_FFFF) as f32 * (1.0 / (1u32 << 24) as f32)
    }
}

fn box_muller_16(block: &mut [f32]) {
    for j in 0..8 {
        let radius = (-2.0 * (1.0 - block[j]).ln()).sqrt();
        let theta = 2.0 * std::f32::consts::PI * block[j + 8];
        block[j] = radius * theta.cos();
        block[j + 8] = radius * theta.sin();
    }
}
