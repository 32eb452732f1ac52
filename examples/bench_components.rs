//! Times the heavy pieces alone on a models folder: loading, one UNet step (with guidance, so
//! batch 2), the live preview the app makes after each step, and one VAE decode. Complements
//! tools/bench.sh, which times the whole CLI run.
//!
//!     cargo run --release --example bench_components -- MODELS_DIR [SIZE] [unet|vae]
//!
//! A third argument times only that part (for profiling one of them).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops at the first failure

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use arc2face_studio::diffusion::preview;
use arc2face_studio::diffusion::unet::{Conditioning, UNet, UNetConfig};
use arc2face_studio::diffusion::vae::{Vae, VaeConfig};
use arc2face_studio::models::{self, ModelsDir, load_safetensors};

/// CPU seconds this process has used (user + system, all threads), from /proc/self/stat; 0 where
/// that is unreadable. Next to wall times it shows what the machine's other load took.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|t| t.parse::<f64>().ok()).sum());
    ticks / 100.0 // USER_HZ
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = ModelsDir::new(args.next().ok_or_else(|| anyhow::anyhow!("usage: bench_components MODELS_DIR [SIZE]"))?);
    let size: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(256);
    let only = args.next();
    let (run_unet, run_vae) = (only.as_deref() != Some("vae"), only.as_deref() != Some("unet"));
    let device = Device::Cpu;

    let config: UNetConfig = models::read_json(&dir.path(models::UNET_CONFIG))?;
    let vae_config: VaeConfig = models::read_json(&dir.path(models::VAE_CONFIG))?;
    let side = size / vae_config.scale_factor();
    let latents = Tensor::randn(0f32, 1., (2, config.in_channels(), side, side), &device)?;
    if run_unet {
        let started = Instant::now();
        let unet = UNet::new(load_safetensors(&dir.path(models::UNET_WEIGHTS), DType::F32, &device)?, &config)?;
        eprintln!("load UNet        {:7.3} s", started.elapsed().as_secs_f64());
        let context = Tensor::randn(0f32, 1., (2, 77, config.cross_attention_dim()), &device)?;
        let mut step_seconds = f64::INFINITY;
        for i in 0..3 {
            let (started, cpu) = (Instant::now(), cpu_seconds());
            unet.forward(&latents, 999.0, &Conditioning::context(&context))?;
            step_seconds = step_seconds.min(started.elapsed().as_secs_f64());
            eprintln!("UNet step {i} (batch 2, {size} px) {:7.3} s  (cpu {:.2} s)", started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
        }
        // The worker's per-step preview: the predicted clean latents to RGB (its send is a move).
        let started = Instant::now();
        let previews = 100;
        for _ in 0..previews {
            std::hint::black_box(preview::latents_to_rgb(&latents)?);
        }
        let preview_seconds = started.elapsed().as_secs_f64() / previews as f64;
        eprintln!(
            "preview          {:7.3} ms  ({:.3} % of the fastest UNet step)",
            preview_seconds * 1e3,
            100.0 * preview_seconds / step_seconds
        );
    }
    if !run_vae {
        return Ok(());
    }
    let started = Instant::now();
    let vae = Vae::new(load_safetensors(&dir.path(models::VAE_WEIGHTS), DType::F32, &device)?, &vae_config)?;
    eprintln!("load VAE         {:7.3} s", started.elapsed().as_secs_f64());
    let (started, cpu) = (Instant::now(), cpu_seconds());
    vae.decode(&latents.narrow(0, 0, 1)?)?;
    eprintln!("VAE decode ({size} px)  {:7.3} s  (cpu {:.2} s)", started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    Ok(())
}
