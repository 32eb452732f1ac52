//! Each piece of the pipeline against the reference stack's numbers (tests/fixtures/tiny,
//! written by tools/make_fixtures.py with torch, diffusers and transformers).
//!
//! Tolerances: the reference runs in f32; re-running it in f64 moves its outputs by ~1e-6 of
//! their scale, so 1e-5 (pieces) and 1e-4 (whole generations, where errors compound over
//! steps) leave margin for summation order while still catching any real deviation — a GELU
//! approximation, a wrong rounding of timesteps, a missing normalisation all show at 1e-4 or more.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;

use arc2face_studio::diffusion::id_encoder::{IdEncoder, IdEncoderConfig};
use arc2face_studio::diffusion::noise::TorchGenerator;
use arc2face_studio::diffusion::schedulers::{Sampler, Scheduler};
use arc2face_studio::diffusion::unet::{Conditioning, UNet, UNetConfig};
use arc2face_studio::diffusion::vae::{Vae, VaeConfig};
use arc2face_studio::engine::GenerationSpec;
use arc2face_studio::models::{self, ModelsDir, load_pickle, load_safetensors};

#[test]
fn scheduler_timesteps_and_sigmas_match_diffusers() {
    let schedule = noise_schedule();
    for steps in [1, 2, 5, 6, 25, 50] {
        let Scheduler::DpmSolver(scheduler) = Scheduler::new(Sampler::DpmPp2M, &schedule, steps) else { unreachable!() };
        let expected: Vec<i64> = reference(&format!("scheduler_{steps}_timesteps.npy")).to_vec1().unwrap();
        let actual: Vec<i64> = scheduler.timesteps().iter().map(|&t| t as i64).collect();
        assert_eq!(actual, expected, "timesteps for {steps} steps");
        let expected = reference(&format!("scheduler_{steps}_sigmas.npy"));
        let actual = Tensor::new(scheduler.sigmas(), &Device::Cpu).unwrap();
        assert_close(&format!("sigmas for {steps} steps"), &actual, &expected, 1e-5);
    }
}

#[test]
fn scheduler_steps_match_diffusers_with_a_formula_model() {
    let schedule = noise_schedule();
    for steps in [1, 2, 5, 25] {
        let mut scheduler = Scheduler::new(Sampler::DpmPp2M, &schedule, steps);
        let mut x = reference("scheduler_trace_x.npy");
        for t in scheduler.timesteps().to_vec() {
            // The reference's "model": eps = sin(x)·0.5 + t/1000, in f32.
            let eps = ((x.sin().unwrap() * 0.5).unwrap() + (t as f32 / 1000.0) as f64).unwrap();
            x = scheduler.step(&eps, &x, None).unwrap().prev_sample;
        }
        assert_close(&format!("trace of {steps} steps"), &x, &reference(&format!("scheduler_{steps}_trace.npy")), 1e-5);
    }
}

#[test]
fn seeded_noise_matches_torch_randn() {
    let cases = [
        (0, "noise_seed_0.npy"),
        (1, "noise_seed_1.npy"),
        (42, "noise_seed_42.npy"),
        (2147483647, "noise_seed_2147483647.npy"),
        (7, "noise_seed_7_shape_1x4x3x3.npy"),
        (123, "noise_seed_123_shape_1x4x64x64.npy"),
    ];
    for (seed, name) in cases {
        let expected = reference(name);
        let actual = TorchGenerator::new(seed).randn_tensor(expected.dims(), &Device::Cpu).unwrap();
        let error = relative_max_error(&actual, &expected);
        // torch's vectorised log/sin/cos differ from libm's in the last bits only.
        assert!(error < 1e-5, "seed {seed}: relative max error {error:.3e}");
    }
}

fn load_encoder() -> IdEncoder {
    let dir = ModelsDir::new(models_dir());
    let config: IdEncoderConfig = models::read_json(&dir.path(models::ENCODER_CONFIG)).unwrap();
    let vb = load_pickle(&dir.path(models::ENCODER_WEIGHTS), DType::F32, &Device::Cpu).unwrap();
    IdEncoder::new(vb, &config).unwrap()
}

#[test]
fn id_encoder_matches_transformers() {
    let encoder = load_encoder();
    let identity: Vec<f32> = reference("id_embedding.npy").to_vec1().unwrap();
    assert_close("conditional", &encoder.encode_identity(&identity).unwrap(), &reference("encoder_cond.npy"), 1e-5);
    assert_close("unconditional", &encoder.encode_unconditional().unwrap(), &reference("encoder_uncond.npy"), 1e-5);
}

#[test]
fn unet_forward_matches_diffusers() {
    let dir = ModelsDir::new(models_dir());
    let config: UNetConfig = models::read_json(&dir.path(models::UNET_CONFIG)).unwrap();
    let vb = load_safetensors(&dir.path(models::UNET_WEIGHTS), DType::F32, &Device::Cpu).unwrap();
    let unet = UNet::new(vb, &config).unwrap();
    let sample = reference("unet_sample.npy");
    let context = reference("unet_encoder_hidden_states.npy");
    for t in [999, 500] {
        let out = unet.forward(&sample, t as f64, &Conditioning::context(&context)).unwrap();
        assert_close(&format!("UNet at t={t}"), &out, &reference(&format!("unet_out_t{t}.npy")), 1e-5);
    }
}

#[test]
fn vae_decode_matches_diffusers() {
    let dir = ModelsDir::new(models_dir());
    let config: VaeConfig = models::read_json(&dir.path(models::VAE_CONFIG)).unwrap();
    let vb = load_safetensors(&dir.path(models::VAE_WEIGHTS), DType::F32, &Device::Cpu).unwrap();
    let vae = Vae::new(vb, &config).unwrap();
    // The reference decoded its input as is; our decode divides by the scaling factor first.
    let latents = (reference("vae_latents.npy") * config.scaling_factor).unwrap();
    assert_close("VAE decode", &vae.decode(&latents).unwrap(), &reference("vae_decoded.npy"), 1e-5);
}

/// Two images of 32 px from the given latents or, without them, from seed 42.
fn run_generation(initial_latents: Option<Tensor>, steps: usize, guidance: f64) -> (Tensor, Vec<Vec<u8>>) {
    run_generation_in(DType::F32, initial_latents, steps, guidance)
}

fn run_generation_in(dtype: DType, initial_latents: Option<Tensor>, steps: usize, guidance: f64) -> (Tensor, Vec<Vec<u8>>) {
    let seed = initial_latents.is_none().then_some(42);
    let spec = GenerationSpec { num_images: 2, steps, guidance, size: Some(32), seed, ..Default::default() };
    generate(dtype, spec, initial_latents)
}

fn check(name: &str, latents: &Tensor, images: &[Vec<u8>]) {
    let (expected_latents, expected_images) = (reference(&format!("gen_{name}_latents.npy")), reference(&format!("gen_{name}_images.npy")));
    check_generation(name, latents, images, &expected_latents, &expected_images, 1e-4);
}

#[test]
fn generation_with_guidance_matches_diffusers() {
    let (latents, images) = run_generation(Some(reference("gen_noise.npy")), 5, 3.0);
    check("cfg", &latents, &images);
}

#[test]
fn generation_without_guidance_matches_diffusers() {
    let (latents, images) = run_generation(Some(reference("gen_noise.npy")), 5, 1.0);
    check("nocfg", &latents, &images);
}

#[test]
fn seeded_generation_matches_diffusers_with_per_image_generators() {
    let (latents, images) = run_generation(None, 4, 3.0);
    check("seed", &latents, &images);
}

/// Half precision on the CPU: the models run in f16 (latents and sampler arithmetic stay f32),
/// so the result stays within f16's resolution of the f32 reference.
#[test]
fn half_precision_on_the_cpu_stays_close_to_the_f32_reference() {
    let (latents, images) = run_generation_in(DType::F16, Some(reference("gen_noise.npy")), 5, 3.0);
    assert_close("f16 latents", &latents, &reference("gen_cfg_latents.npy"), 1e-2);
    let expected: Vec<u8> = reference("gen_cfg_images.npy").flatten_all().unwrap().to_vec1().unwrap();
    let (mean, max) = image_difference(&images.concat(), &expected);
    eprintln!("f16 images: mean {mean:.3}, max {max} levels from f32");
    assert!(mean < 2.0, "f16 images: mean {mean:.3} levels");
}
