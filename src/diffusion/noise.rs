//! Initial noise identical to `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`
//! for float32 tensors of 16 values or more (RECIPE.md, "Sampling"), so that a seed means the same image
//! here as in diffusers with a CPU generator, on every device.
//!
//! torch draws one 24-bit uniform per value from mt19937, then turns each block of 16 into normals
//! with Box–Muller (the first 8 as radii, the last 8 as angles). When the count is not a multiple
//! of 16, the last 16 positions are redrawn from 16 fresh uniforms.

use rand_mt::Mt;

/// The smallest tensor torch fills this way; smaller ones take another path that we do not need.
pub const MIN_VALUES: usize = 16;

/// `n` standard normal values as torch's CPU generator seeded with `seed` draws them.
/// Panics when `n < MIN_VALUES`: latents are always larger.
pub fn torch_randn(seed: u64, n: usize) -> Vec<f32> {
    assert!(n >= MIN_VALUES, "torch_randn needs at least {MIN_VALUES} values");
    // torch seeds mt19937 with the low 32 bits of the seed.
    let mut mt = Mt::new(seed as u32);
    let mut uniform = || (mt.next_u32() & 0xFF_FFFF) as f32 * (1.0 / (1u32 << 24) as f32);
    let mut out: Vec<f32> = (0..n).map(|_| uniform()).collect();
    for block in out.chunks_exact_mut(16) {
        box_muller_16(block);
    }
    if !n.is_multiple_of(16) {
        let tail = &mut out[n - 16..];
        tail.iter_mut().for_each(|v| *v = uniform());
        box_muller_16(tail);
    }
    out
}

fn box_muller_16(block: &mut [f32]) {
    for j in 0..8 {
        let radius = (-2.0 * (1.0 - block[j]).ln()).sqrt();
        let theta = 2.0 * std::f32::consts::PI * block[j + 8];
        block[j] = radius * theta.cos();
        block[j + 8] = radius * theta.sin();
    }
}
