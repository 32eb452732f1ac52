//! CPU kernels for the ops that dominate Stable Diffusion on the CPU: convolution (also over a
//! nearest-neighbour upsampled input, never built), group norm (with the SiLU that follows it),
//! attention and GEGLU.
//!
//! candle's own CPU versions of these are slow or memory-hungry for SD's shapes: its convolution
//! rebuilds the weight matrix and an NHWC copy of the input on every call and fills the im2col
//! tiles element by element; its group norm is eight whole-tensor passes; attention builds the
//! full score matrix of every head at once. Each function here handles contiguous f32 tensors
//! (the convolution f16 too) on the CPU with the `gemm` crate (the one candle uses, so AVX-512 is
//! picked at run time) and rayon, and falls back to exactly the candle ops the layers used before
//! for anything else (CUDA keeps candle's kernels).

use candle_core::{D, DType, Device, Layout, Module, Result, Storage, Tensor, WithDType};
use candle_nn::VarBuilder;
use gemm::Parallelism;
use half::f16;
use rayon::prelude::*;

/// The data of a contiguous CPU tensor of element type `T`, or `None` (another device, dtype
/// or layout).
fn cpu_slice<'a, T: WithDType>(storage: &'a Storage, layout: &Layout) -> Option<&'a [T]> {
    let Storage::Cpu(cpu) = storage else { return None };
    let data = cpu.as_slice::<T>().ok()?;
    let (start, end) = layout.contiguous_offsets()?;
    Some(&data[start..end])
}

fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout) -> Option<&'a [f32]> {
    cpu_slice(storage, layout)
}

fn from_vec<T: WithDType>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// gemm's parallelism for a call that may use every thread of rayon's pool.
fn all_threads() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// A pointer that rayon tasks may share: each task writes a part no other task touches.
struct SharedMut<T>(*mut T);
impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}
// SAFETY: only used to hand disjoint output regions to parallel tasks (see each use).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// (A method, so that closures capture the whole `Send` wrapper, not its raw field.)
    fn get(self) -> *mut T {
        self.0
    }
}

/// `dst (m×n) = [dst +] scale · lhs (m×k) · rhs (k×n)`, each given by its row and column strides
/// in elements; `dst` is read only when `accumulate`.
///
/// # Safety
/// The pointers must cover every element the strides reach; `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm<T: WithDType>(
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    (dst_rs, dst_cs): (usize, usize),
    lhs: *const T,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const T,
    (rhs_rs, rhs_cs): (usize, usize),
    scale: T,
    parallelism: Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            T::one(),
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Convolution

/// An im2col block holds about this many floats (1 MiB): large enough for efficient matrix
/// products, small enough to stay in a core's L2 cache between its filling and its use.
const IM2COL_BUDGET: usize = 1 << 18;

/// A 2-D convolution, NCHW, with candle_nn's semantics (`weight` `(C_out, C_in, kh, kw)`, `bias`
/// `(C_out)`, no groups or dilation). `upsample` (1 or more) first repeats every input pixel
/// `upsample × upsample` times (nearest-neighbour) without building the larger input.
pub fn conv2d_upsampled(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    upsample: usize,
) -> Result<Tensor> {
    if let Some(out) = cpu_conv2d(x, weight, bias, stride, padding, upsample)? {
        return Ok(out);
    }
    let x = match upsample {
        1 => x.clone(),
        f => {
            let (_, _, h, w) = x.dims4()?;
            x.upsample_nearest2d(f * h, f * w)?
        }
    };
    let out = x.conv2d(weight, padding, stride, 1, 1)?;
    match bias {
        Some(bias) => out.broadcast_add(&bias.reshape((1, bias.dims1()?, 1, 1))?),
        None => Ok(out),
    }
}

/// A 2-D convolution, NCHW, as candle_nn's `Conv2d` computes it (no groups or dilation).
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    conv2d_upsampled(x, weight, bias, stride, padding, 1)
}

/// Shapes of one convolution call.
#[derive(Debug, Clone, Copy)]
struct ConvShape {
    batch: usize,
    c_in: usize,
    /// The input's size after upsampling.
    h: usize,
    w: usize,
    /// The size of the stored input (before upsampling).
    src_h: usize,
    src_w: usize,
    upsample: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    padding: usize,
    out_h: usize,
    out_w: usize,
}

fn cpu_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    upsample: usize,
) -> Result<Option<Tensor>> {
    let (batch, c_in, src_h, src_w) = x.dims4()?;
    let (c_out, w_c_in, kh, kw) = weight.dims4()?;
    let (h, w) = (src_h * upsample, src_w * upsample);
    if w_c_in != c_in || stride == 0 || upsample == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
        return Ok(None); // candle reports the error
    }
    let out_h = (h + 2 * padding - kh) / stride + 1;
    let out_w = (w + 2 * padding - kw) / stride + 1;
    let s = ConvShape { batch, c_in, h, w, src_h, src_w, upsample, c_out, kh, kw, stride, padding, out_h, out_w };
    match x.dtype() {
        DType::F32 => cpu_conv2d_typed::<f32>(x, weight, bias, s),
        DType::F16 => cpu_conv2d_typed::<f16>(x, weight, bias, s),
        _ => Ok(None),
    }
}

fn cpu_conv2d_typed<T: WithDType>(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, s: ConvShape) -> Result<Option<Tensor>> {
    let (x_storage, x_layout) = x.storage_and_layout();
    let (w_storage, w_layout) = weight.storage_and_layout();
    let (Some(xs), Some(ws)) = (cpu_slice::<T>(&x_storage, x_layout), cpu_slice::<T>(&w_storage, w_layout)) else { return Ok(None) };
    let bias_guard = bias.map(|b| b.storage_and_layout());
    let bs = match &bias_guard {
        Some((storage, layout)) => match cpu_slice::<T>(storage, layout) {
            Some(b) if b.len() == s.c_out => Some(b),
            _ => return Ok(None),
        },
        None => None,
    };
    let out = conv2d_cpu(xs, ws, bs, s);
    from_vec(out, &[s.batch, s.c_out, s.out_h, s.out_w]).map(Some)
}

fn conv2d_cpu<T: WithDType>(x: &[T], weight: &[T], bias: Option<&[T]>, s: ConvShape) -> Vec<T> {
    let plane = s.out_h * s.out_w;
    let mut out = vec![T::zero(); s.batch * s.c_out * plane];
    if let Some(bias) = bias {
        for (out_plane, &b) in out.chunks_mut(plane).zip(bias.iter().cycle()) {
            out_plane.fill(b);
        }
    }
    let k = s.c_in * s.kh * s.kw;
    let in_plane = s.src_h * s.src_w;
    if s.kh == 1 && s.kw == 1 && s.stride == 1 && s.padding == 0 && s.upsample == 1 {
        // A matrix product per image: out (C_out × HW) = W (C_out × C_in) · x (C_in × HW).
        for b in 0..s.batch {
            // SAFETY: the image's input, the weights and its output are whole, separate buffers.
            unsafe {
                gemm(
                    true,
                    (s.c_out, plane, s.c_in),
                    out[b * s.c_out * plane..].as_mut_ptr(),
                    (plane, 1),
                    weight.as_ptr(),
                    (s.c_in, 1),
                    x[b * s.c_in * in_plane..].as_ptr(),
                    (in_plane, 1),
                    T::one(),
                    all_threads(),
                )
            }
        }
        return out;
    }
    // im2col: col (k × n), row (ci, dy, dx), columns the pixels of some output rows, so that the
    // weights (C_out, C_in·kh·kw) are the product's left side as stored.
    let total_rows = s.batch * s.out_h;
    if s.batch > 1 && total_rows * s.out_w <= SMALL_CONV_PIXELS {
        // Few pixels (the UNet's deepest levels): every image in one product, so that the
        // weights, the bulk of the work's memory traffic here, are read once; then to NCHW.
        let n = total_rows * s.out_w;
        let mut col = vec![T::zero(); k * n];
        im2col(&mut col, x, s, 0..total_rows, true);
        let mut product = vec![T::zero(); s.c_out * n];
        // SAFETY: col (k × n), weight (C_out × k) and product (C_out × n) are whole buffers.
        unsafe {
            gemm(
                false,
                (s.c_out, n, k),
                product.as_mut_ptr(),
                (n, 1),
                weight.as_ptr(),
                (k, 1),
                col.as_ptr(),
                (n, 1),
                T::one(),
                all_threads(),
            )
        }
        for (b, image) in out.chunks_mut(s.c_out * plane).enumerate() {
            for (c, out_plane) in image.chunks_mut(plane).enumerate() {
                for (o, &p) in out_plane.iter_mut().zip(&product[c * n + b * plane..]) {
                    *o += p;
                }
            }
        }
        return out;
    }
    // Blocks of output rows within one image, each product's right side sized for the cache.
    let rows_per_block = (IM2COL_BUDGET / (k * s.out_w)).max(MIN_BLOCK_PIXELS.div_ceil(s.out_w)).clamp(1, s.out_h);
    let blocks: Vec<(usize, usize)> = (0..s.batch).flat_map(|b| (0..s.out_h).step_by(rows_per_block).map(move |y0| (b, y0))).collect();
    let dst = SharedMut(out.as_mut_ptr());
    let block = |(b, y0): (usize, usize), col: &mut [T], serial: bool, parallelism: Parallelism| {
        let y1 = (y0 + rows_per_block).min(s.out_h);
        let n = (y1 - y0) * s.out_w;
        let col = &mut col[..k * n];
        im2col(col, x, s, b * s.out_h + y0..b * s.out_h + y1, serial);
        // SAFETY: dst + offset is the block's first pixel in channel 0 of image b; the block
        // writes rows [y0, y1) of each channel of that image, which no other block writes, and
        // the last element it reaches, (C_out − 1)·plane + n − 1 further, is inside the image.
        unsafe {
            let dst = dst.get().add(b * s.c_out * plane + y0 * s.out_w);
            gemm(true, (s.c_out, n, k), dst, (plane, 1), weight.as_ptr(), (k, 1), col.as_ptr(), (n, 1), T::one(), parallelism)
        }
    };
    let col_len = k * rows_per_block * s.out_w;
    if blocks.len() >= 2 * rayon::current_num_threads() {
        // Enough blocks for every thread: each fills and multiplies its own in its own cache.
        blocks.par_iter().for_each(|&b| with_scratch(col_len, |col| block(b, col, true, Parallelism::None)));
    } else {
        with_scratch(col_len, |col| {
            for &b in &blocks {
                block(b, col, false, all_threads());
            }
        });
    }
    out
}

/// Pixels an im2col block has at least (whatever its size), so that each product reuses the
/// weights it reads enough to be bound by arithmetic rather than memory.
const MIN_BLOCK_PIXELS: usize = 256;

/// Output pixels (batch included) up to which a convolution multiplies all images at once.
const SMALL_CONV_PIXELS: usize = 256;

thread_local! {
    /// Each thread's im2col buffer, kept between calls (a fresh one would be page-faulted in and
    /// zeroed by the kernel every time).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer of `len` elements (contents unspecified): for f32,
/// the thread's kept one unless it is in use further up the stack; else a fresh one.
fn with_scratch<T: WithDType, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<f32>() {
        return f(&mut vec![T::zero(); len]);
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
            let buffer: &mut [f32] = &mut buffer[..len];
            // SAFETY: T is f32 (checked above), so this is the same slice.
            f(unsafe { &mut *(buffer as *mut [f32] as *mut [T]) })
        }
        Err(_) => f(&mut vec![T::zero(); len]),
    })
}

/// Fills `col` with the im2col matrix of output rows `rows` (indices into batch × out_h): `k × n`
/// with `k` = C_in·kh·kw and `n` = the rows' pixels, zero where the kernel reads the padding.
/// Every element is written. `serial`: on this thread only (else split over the input channels).
fn im2col<T: WithDType>(col: &mut [T], x: &[T], s: ConvShape, rows: std::ops::Range<usize>, serial: bool) {
    let n = rows.len() * s.out_w;
    let in_plane = s.src_h * s.src_w;
    // For each kernel column dx, the output columns [lo, hi) whose input column
    // x·stride + dx − padding is inside the image, and the first of those input columns.
    let spans: Vec<(usize, usize, usize)> = (0..s.kw)
        .map(|dx| {
            let lo = s.padding.saturating_sub(dx).div_ceil(s.stride).min(s.out_w);
            let hi = ((s.w + s.padding).saturating_sub(dx)).div_ceil(s.stride).clamp(lo, s.out_w);
            (lo, hi, (lo * s.stride + dx).saturating_sub(s.padding))
        })
        .collect();
    let fill_channel = |(ci, channel): (usize, &mut [T])| {
        let mut upsampled = vec![T::zero(); if s.upsample > 1 { s.w } else { 0 }];
        for (i, row) in rows.clone().enumerate() {
            let (b, y) = (row / s.out_h, row % s.out_h);
            for dy in 0..s.kh {
                let iy = (y * s.stride + dy) as isize - s.padding as isize;
                let inside = iy >= 0 && (iy as usize) < s.h;
                // The input row, upsampled if needed.
                let src: &[T] = if !inside {
                    &[]
                } else {
                    let stored = &x[(b * s.c_in + ci) * in_plane + (iy as usize / s.upsample) * s.src_w..][..s.src_w];
                    if s.upsample == 1 {
                        stored
                    } else {
                        for (pixels, &v) in upsampled.chunks_mut(s.upsample).zip(stored) {
                            pixels.fill(v);
                        }
                        &upsampled
                    }
                };
                for (dx, &(lo, hi, first)) in spans.iter().enumerate() {
                    let dst = &mut channel[(dy * s.kw + dx) * n + i * s.out_w..][..s.out_w];
                    if !inside {
                        dst.fill(T::zero());
                        continue;
                    }
                    dst[..lo].fill(T::zero());
                    dst[hi..].fill(T::zero());
                    if lo == hi {
                        continue;
                    }
                    if s.stride == 1 {
                        dst[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
                    } else {
                        for (j, d) in dst[lo..hi].iter_mut().enumerate() {
                            *d = src[first + j * s.stride];
                        }
                    }
                }
            }
        }
    };
    let per_channel = s.kh * s.kw * n;
    if serial {
        col.chunks_mut(per_channel).enumerate().for_each(fill_channel);
    } else {
        col.par_chunks_mut(per_channel).enumerate().for_each(fill_channel);
    }
}

/// candle_nn's `Conv2d` running on [`conv2d`].
#[derive(Debug, Clone)]
pub struct Conv2d(candle_nn::Conv2d);

impl Conv2d {
    /// Applies the convolution to `x` upsampled ×`factor` (nearest-neighbour).
    pub fn forward_upsampled(&self, x: &Tensor, factor: usize) -> Result<Tensor> {
        let config = self.0.config();
        if config.groups != 1 || config.dilation != 1 {
            let (_, _, h, w) = x.dims4()?;
            return self.0.forward(&x.upsample_nearest2d(factor * h, factor * w)?);
        }
        conv2d_upsampled(x, self.0.weight(), self.0.bias(), config.stride, config.padding, factor)
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let config = self.0.config();
        if config.groups != 1 || config.dilation != 1 {
            return self.0.forward(x);
        }
        conv2d(x, self.0.weight(), self.0.bias(), config.stride, config.padding)
    }
}

/// Loads a convolution as `candle_nn::conv2d` does.
pub fn conv2d_layer(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    config: candle_nn::Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    Ok(Conv2d(candle_nn::conv2d(in_channels, out_channels, kernel, config, vb)?))
}

// ---------------------------------------------------------------------------------------------
// Group norm

/// Group normalisation over `(B, C, ...)`, as candle_nn's `GroupNorm`, optionally followed by
/// SiLU in the same pass.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
    /// candle's version, for the tensors the kernel does not handle.
    fallback: candle_nn::GroupNorm,
}

/// Loads a group norm as `candle_nn::group_norm` does.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
    let fallback = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
    Ok(GroupNorm { weight, bias, groups, eps, fallback })
}

impl GroupNorm {
    /// `silu(group_norm(x))`.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        match self.cpu_forward(x, true)? {
            Some(out) => Ok(out),
            None => candle_nn::ops::silu(&self.fallback.forward(x)?),
        }
    }

    fn cpu_forward(&self, x: &Tensor, silu: bool) -> Result<Option<Tensor>> {
        let dims = x.dims();
        if dims.len() < 3 || dims[1] != self.weight.dim(0)? || !dims[1].is_multiple_of(self.groups) {
            return Ok(None);
        }
        let (x_storage, x_layout) = x.storage_and_layout();
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        let (b_storage, b_layout) = self.bias.storage_and_layout();
        let (Some(xs), Some(gamma), Some(beta)) =
            (cpu_f32(&x_storage, x_layout), cpu_f32(&w_storage, w_layout), cpu_f32(&b_storage, b_layout))
        else {
            return Ok(None);
        };
        let channels = dims[1];
        let plane: usize = dims[2..].iter().product();
        let per_group = channels / self.groups * plane;
        let mut out = vec![0f32; xs.len()];
        let eps = self.eps;
        let groups = self.groups;
        out.par_chunks_mut(per_group).zip(xs.par_chunks(per_group)).enumerate().for_each(|(i, (out, xs))| {
            let first_channel = (i % groups) * (channels / groups);
            let n = xs.len() as f64;
            let mean = sum(xs) / n;
            let var = sum_sq_dev(xs, mean as f32) / n;
            let rstd = (1.0 / (var + eps).sqrt()) as f32;
            for (c, (out, xs)) in out.chunks_mut(plane).zip(xs.chunks(plane)).enumerate() {
                let scale = rstd * gamma[first_channel + c];
                let shift = beta[first_channel + c] - mean as f32 * scale;
                if silu {
                    simd(|| out.iter_mut().zip(xs).for_each(|(o, &x)| *o = silu_f32(x * scale + shift)));
                } else {
                    out.iter_mut().zip(xs).for_each(|(o, &x)| *o = x * scale + shift);
                }
            }
        });
        from_vec(out, dims).map(Some)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.cpu_forward(x, false)? {
            Some(out) => Ok(out),
            None => self.fallback.forward(x),
        }
    }
}

/// Sum in f64 of f32 partial sums over short runs (accurate and vectorised).
fn sum(xs: &[f32]) -> f64 {
    simd(|| xs.chunks(1024).map(|c| fold_lanes(c, 0.0, |a, x| a + x, |a, b| a + b) as f64).sum())
}

fn sum_sq_dev(xs: &[f32], mean: f32) -> f64 {
    simd(|| xs.chunks(1024).map(|c| fold_lanes(c, 0.0, |a, x| a + (x - mean) * (x - mean), |a, b| a + b) as f64).sum())
}

/// Folds `xs` with `step` in 16 independent lanes, then the lanes with `combine` (which must be
/// associative and commutative up to rounding: a sum, a maximum). One chain would wait on each
/// step's latency and never be vectorised.
#[inline(always)]
fn fold_lanes(xs: &[f32], init: f32, step: impl Fn(f32, f32) -> f32, combine: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder().iter().fold(init, |a, &x| step(a, x));
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = step(*lane, x);
        }
    }
    lanes.into_iter().fold(rest, combine)
}

// ---------------------------------------------------------------------------------------------
// Elementwise helpers

/// Runs `f` compiled for AVX2 and FMA when the CPU has them (the build targets baseline x86-64,
/// so loops in `f` are otherwise vectorised for SSE2 only). An AVX-512 variant measured slower.
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features avx2 is compiled for.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// `e^x` for f32, relative error below 2e-7 over the range where it is finite and normal
/// (Cephes' `expf`), in a form the compiler vectorises.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[inline(always)]
fn silu_f32(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
}

/// `erf(x)` for f32, absolute error below 2e-7 (Abramowitz & Stegun 7.1.26 is 1.5e-7; this is
/// the same rational form with a correctly rounded exponential).
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_f32(-a * a);
    y.copysign(x)
}

// ---------------------------------------------------------------------------------------------
// GEGLU

/// GEGLU's gate: `(..., 2·I)` → `value · gelu(gate)` `(..., I)`, value the first half, gelu the
/// exact (erf) one.
pub fn geglu(projected: &Tensor) -> Result<Tensor> {
    let width = projected.dim(D::Minus1)?;
    if width % 2 == 0 {
        let (storage, layout) = projected.storage_and_layout();
        if let Some(xs) = cpu_f32(&storage, layout) {
            let inner = width / 2;
            let mut out = vec![0f32; xs.len() / 2];
            out.par_chunks_mut(inner).zip(xs.par_chunks(width)).for_each(|(out, xs)| {
                let (value, gate) = xs.split_at(inner);
                simd(|| {
                    for ((o, &v), &g) in out.iter_mut().zip(value).zip(gate) {
                        *o = v * (0.5 * g * (1.0 + erf_f32(g * std::f32::consts::FRAC_1_SQRT_2)));
                    }
                });
            });
            let mut dims = projected.dims().to_vec();
            let last = dims.len() - 1;
            dims[last] = inner;
            return from_vec(out, &dims);
        }
    }
    let halves = projected.chunk(2, D::Minus1)?;
    &halves[0] * halves[1].gelu_erf()?
}

// ---------------------------------------------------------------------------------------------
// Attention

/// Queries per block of the attention kernel: bounds its score matrix to `QUERY_BLOCK × M` per
/// thread whatever the token count.
const QUERY_BLOCK: usize = 256;

/// Scaled dot-product attention with `heads` heads: `q` `(B, N, H·D)`, `k` and `v` `(B, M, H·D)`
/// → `(B, N, H·D)`, the heads' outputs side by side as the split-heads formulation leaves them
/// after merging. Softmax in f32.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    if let Some(out) = cpu_attention(q, k, v, heads)? {
        return Ok(out);
    }
    let split = |t: &Tensor| -> Result<Tensor> {
        let (batch, n, inner) = t.dims3()?;
        t.reshape((batch, n, heads, inner / heads))?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let head_dim = q.dim(D::Minus1)?;
    let in_dtype = q.dtype();
    let scores = (q.to_dtype(DType::F32)?.matmul(&k.to_dtype(DType::F32)?.t()?)? * (head_dim as f64).powf(-0.5))?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v.to_dtype(DType::F32)?)?.to_dtype(in_dtype)?;
    let (batch, heads, n, head_dim) = out.dims4()?;
    out.transpose(1, 2)?.reshape((batch, n, heads * head_dim))
}

fn cpu_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Option<Tensor>> {
    let (batch, n, inner) = q.dims3()?;
    let (k_batch, m, k_inner) = k.dims3()?;
    if k.dims() != v.dims() || k_batch != batch || k_inner != inner || heads == 0 || !inner.is_multiple_of(heads) || m == 0 {
        return Ok(None);
    }
    let (q_storage, q_layout) = q.storage_and_layout();
    let (k_storage, k_layout) = k.storage_and_layout();
    let (v_storage, v_layout) = v.storage_and_layout();
    let (Some(qs), Some(ks), Some(vs)) = (cpu_f32(&q_storage, q_layout), cpu_f32(&k_storage, k_layout), cpu_f32(&v_storage, v_layout))
    else {
        return Ok(None);
    };
    let head_dim = inner / heads;
    let scale = (head_dim as f32).powf(-0.5);
    let mut out = vec![0f32; batch * n * inner];
    let dst = SharedMut(out.as_mut_ptr());
    let blocks = n.div_ceil(QUERY_BLOCK);
    (0..batch * heads * blocks).into_par_iter().for_each_init(Vec::new, |scores: &mut Vec<f32>, task| {
        let (b, h, block) = (task / (heads * blocks), task / blocks % heads, task % blocks);
        let rows = QUERY_BLOCK.min(n - block * QUERY_BLOCK);
        let q_offset = (b * n + block * QUERY_BLOCK) * inner + h * head_dim;
        let kv_offset = b * m * inner + h * head_dim;
        scores.resize(rows * m, 0.0);
        // SAFETY: q rows [block] of head h, k and v of head h lie inside their buffers (offsets and
        // strides from their shapes); scores is rows × m.
        unsafe {
            gemm(
                false,
                (rows, m, head_dim),
                scores.as_mut_ptr(),
                (m, 1),
                qs[q_offset..].as_ptr(),
                (inner, 1),
                ks[kv_offset..].as_ptr(),
                (1, inner),
                scale,
                Parallelism::None,
            )
        }
        let sums: Vec<f32> = scores
            .chunks_mut(m)
            .map(|row| {
                simd(|| {
                    let max = fold_lanes(row, f32::NEG_INFINITY, f32::max, f32::max);
                    row.iter_mut().for_each(|s| *s = exp_f32(*s - max));
                    fold_lanes(row, 0.0, |a, x| a + x, |a, b| a + b)
                })
            })
            .collect();
        // SAFETY: this task alone writes rows [block] × columns [h·D, (h+1)·D) of image b.
        unsafe {
            let out = dst.get().add(q_offset);
            gemm(
                false,
                (rows, head_dim, m),
                out,
                (inner, 1),
                scores.as_ptr(),
                (m, 1),
                vs[kv_offset..].as_ptr(),
                (inner, 1),
                1.0,
                Parallelism::None,
            );
            for (r, sum) in sums.iter().enumerate() {
                let row = std::slice::from_raw_parts_mut(out.add(r * inner), head_dim);
                row.iter_mut().for_each(|o| *o /= sum);
            }
        }
    });
    from_vec(out, &[batch, n, inner]).map(Some)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// max |a − b| / max |b|.
    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        diff / scale.max(1e-30)
    }

    fn randn(dims: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1f32, dims, &Device::Cpu).unwrap()
    }

    #[test]
    fn conv2d_matches_candle() {
        // (batch, c_in, h, w, c_out, kernel, stride, padding)
        let cases = [
            (1, 3, 7, 5, 4, 3, 1, 1),
            (2, 5, 9, 11, 7, 3, 1, 1),
            (2, 4, 8, 8, 6, 3, 2, 1),
            (1, 3, 9, 7, 5, 3, 2, 1),
            (2, 6, 5, 3, 5, 1, 1, 0),
            (1, 2, 6, 6, 3, 3, 2, 0),
            (2, 3, 4, 4, 2, 3, 1, 0),
            (2, 64, 33, 30, 8, 3, 1, 1),
            (2, 64, 30, 64, 8, 3, 1, 1), // im2col blocks in parallel
            (2, 64, 80, 80, 8, 3, 2, 1), // the same, stride 2
            (1, 256, 3, 64, 4, 3, 1, 1), // a few blocks, one after the other
        ];
        for (batch, c_in, h, w, c_out, kernel, stride, padding) in cases {
            let x = randn(&[batch, c_in, h, w]);
            let weight = randn(&[c_out, c_in, kernel, kernel]);
            let bias = randn(&[c_out]);
            for bias in [None, Some(&bias)] {
                let ours = conv2d(&x, &weight, bias, stride, padding).unwrap();
                let mut theirs = x.conv2d(&weight, padding, stride, 1, 1).unwrap();
                if let Some(bias) = bias {
                    theirs = theirs.broadcast_add(&bias.reshape((1, c_out, 1, 1)).unwrap()).unwrap();
                }
                let err = rel_err(&ours, &theirs);
                assert!(err <= 1e-5, "{:?}: {err}", (batch, c_in, h, w, c_out, kernel, stride, padding));
            }
        }
    }

    #[test]
    fn conv2d_f16_matches_candle() {
        for (batch, c_in, h, w, c_out, stride, upsample) in
            [(2, 5, 9, 11, 7, 1, 1), (1, 64, 30, 64, 8, 1, 1), (2, 8, 10, 10, 4, 2, 1), (1, 6, 5, 7, 3, 1, 2)]
        {
            let x = randn(&[batch, c_in, h, w]).to_dtype(DType::F16).unwrap();
            let weight = (randn(&[c_out, c_in, 3, 3]) * 0.1).unwrap().to_dtype(DType::F16).unwrap();
            let bias = randn(&[c_out]).to_dtype(DType::F16).unwrap();
            let ours = conv2d_upsampled(&x, &weight, Some(&bias), stride, 1, upsample).unwrap();
            let theirs = x
                .upsample_nearest2d(upsample * h, upsample * w)
                .unwrap()
                .conv2d(&weight, 1, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, c_out, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(ours.dtype(), DType::F16);
            let err = rel_err(&ours.to_dtype(DType::F32).unwrap(), &theirs.to_dtype(DType::F32).unwrap());
            assert!(err <= 2e-3, "{:?}: {err}", (batch, c_in, h, w, c_out, stride, upsample));
        }
    }

    #[test]
    fn conv2d_on_upsampled_input_matches_candle() {
        for (batch, c_in, h, w, c_out) in [(1, 3, 4, 5, 4), (2, 5, 7, 3, 6), (1, 16, 20, 20, 8), (1, 64, 40, 40, 8)] {
            let x = randn(&[batch, c_in, h, w]);
            let weight = randn(&[c_out, c_in, 3, 3]);
            let bias = randn(&[c_out]);
            let ours = conv2d_upsampled(&x, &weight, Some(&bias), 1, 1, 2).unwrap();
            let theirs = x
                .upsample_nearest2d(2 * h, 2 * w)
                .unwrap()
                .conv2d(&weight, 1, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, c_out, 1, 1)).unwrap())
                .unwrap();
            assert!(rel_err(&ours, &theirs) <= 1e-5);
        }
    }

    #[test]
    fn conv2d_falls_back_off_the_fast_path() {
        // f64 and a non-contiguous input go to candle's op.
        let x = randn(&[1, 3, 6, 5]);
        let weight = randn(&[4, 3, 3, 3]);
        let theirs = x.conv2d(&weight, 1, 1, 1, 1).unwrap();
        let ours = conv2d(&x.to_dtype(DType::F64).unwrap(), &weight.to_dtype(DType::F64).unwrap(), None, 1, 1).unwrap();
        assert!(rel_err(&ours.to_dtype(DType::F32).unwrap(), &theirs) <= 1e-5);
        let xt = x.transpose(2, 3).unwrap();
        let ours = conv2d(&xt, &weight, None, 1, 1).unwrap();
        assert!(rel_err(&ours, &xt.conv2d(&weight, 1, 1, 1, 1).unwrap()) <= 1e-5);
    }

    #[test]
    fn group_norm_matches_candle() {
        for (dims, groups) in [(vec![2, 8, 5, 7], 4), (vec![1, 6, 3, 3], 3), (vec![2, 32, 16, 16], 32), (vec![3, 4, 10], 2)] {
            let channels = dims[1];
            let x = (randn(&dims) * 3.0).unwrap().affine(1.0, 0.7).unwrap();
            let weight = randn(&[channels]);
            let bias = randn(&[channels]);
            let fallback = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, 1e-6).unwrap();
            let ours = GroupNorm { weight, bias, groups, eps: 1e-6, fallback: fallback.clone() };
            let theirs = fallback.forward(&x).unwrap();
            assert!(rel_err(&ours.forward(&x).unwrap(), &theirs) <= 1e-5, "{dims:?}");
            let theirs = candle_nn::ops::silu(&theirs).unwrap();
            assert!(rel_err(&ours.forward_silu(&x).unwrap(), &theirs) <= 1e-5, "{dims:?} silu");
        }
    }

    #[test]
    fn elementwise_kernels_match_candle() {
        let x = (randn(&[3, 5, 2 * 37]) * 4.0).unwrap();
        let halves = x.chunk(2, D::Minus1).unwrap();
        let theirs = (&halves[0] * halves[1].gelu_erf().unwrap()).unwrap();
        assert!(rel_err(&geglu(&x).unwrap(), &theirs) <= 1e-5);
        let xs: Vec<f32> = (-1740..1760).map(|i| i as f32 * 0.05).collect(); // where exp is normal
        for x in xs {
            let (ours, exact) = (exp_f32(x), (x as f64).exp());
            assert!(((ours as f64 - exact) / exact).abs() < 3e-7, "exp({x})");
        }
    }

    #[test]
    fn attention_matches_the_split_heads_formulation() {
        // (batch, queries, keys, heads, head_dim): blocks of queries, odd sizes, one head.
        for (batch, n, m, heads, head_dim) in [(2, 7, 5, 2, 3), (1, 300, 77, 4, 8), (2, 513, 513, 1, 16), (1, 1, 1, 1, 1)] {
            let q = (randn(&[batch, n, heads * head_dim]) * 2.0).unwrap();
            let k = randn(&[batch, m, heads * head_dim]);
            let v = randn(&[batch, m, heads * head_dim]);
            let ours = attention(&q, &k, &v, heads).unwrap();
            // The fallback: candle's ops on the split heads.
            let theirs =
                attention(&q.to_dtype(DType::F64).unwrap(), &k.to_dtype(DType::F64).unwrap(), &v.to_dtype(DType::F64).unwrap(), heads)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
            assert!(rel_err(&ours, &theirs) <= 1e-5, "{:?}", (batch, n, m, heads, head_dim));
        }
    }
}
