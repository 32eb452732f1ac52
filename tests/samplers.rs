//! Every sampler against its diffusers scheduler (reference/features, written by
//! tools/make_feature_fixtures.py): timesteps and sigmas for several step counts, step traces
//! with a formula model (no network), and whole seeded generations and generations from given
//! latents on the tiny models. Euler ancestral and LCM add noise at each step: their traces and
//! generations also check that it comes from the image's own generator, continuing its stream.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;

use arc2face_studio::diffusion::noise::TorchGenerator;
use arc2face_studio::diffusion::schedulers::{Sampler, Scheduler};
use arc2face_studio::engine::GenerationSpec;

fn name(sampler: Sampler) -> String {
    serde_json::to_value(sampler).unwrap().as_str().unwrap().to_string()
}

#[test]
fn timesteps_and_sigmas_match_diffusers() {
    let schedule = noise_schedule();
    let params = feature_params();
    for sampler in Sampler::ALL {
        for steps in [1, 2, 4, 8, 25] {
            if steps > sampler.max_steps(schedule.train_timesteps()) {
                continue;
            }
            let expected = &params["samplers"]["schedules"][name(sampler)][steps.to_string()];
            let scheduler = Scheduler::new(sampler, &schedule, steps);
            let want: Vec<f64> = expected["timesteps"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
            let got = scheduler.timesteps();
            assert_eq!(got.len(), want.len(), "{sampler:?} {steps}");
            for (g, w) in got.iter().zip(&want) {
                // Euler's float32 timesteps; the others are integers and must be equal.
                assert!((g - w).abs() <= 1e-3, "{sampler:?}, {steps} steps: timesteps {got:?}, diffusers {want:?}");
            }
            let init = expected["init_noise_sigma"].as_f64().unwrap();
            assert!((scheduler.init_noise_sigma() - init).abs() <= 1e-5 * init.max(1.0), "{sampler:?} init_noise_sigma");
        }
    }
}

#[test]
fn sampler_steps_match_diffusers_with_a_formula_model() {
    let schedule = noise_schedule();
    for sampler in Sampler::ALL {
        let counts: &[usize] = if sampler == Sampler::Lcm { &[1, 2, 4, 8] } else { &[1, 2, 4, 25] };
        for &steps in counts {
            let mut scheduler = Scheduler::new(sampler, &schedule, steps);
            let mut generator = TorchGenerator::new(7);
            let mut x = reference("scheduler_trace_x.npy");
            let mut denoised = Vec::new();
            for (i, t) in scheduler.timesteps().to_vec().into_iter().enumerate() {
                let input = scheduler.scale_model_input(&x, i).unwrap();
                // The reference's "model": eps = sin(x_in)·0.5 + t/1000, in f32.
                let eps = ((input.sin().unwrap() * 0.5).unwrap() + (t / 1000.0) as f32 as f64).unwrap();
                let step = scheduler.step(&eps, &x, Some(&mut generator)).unwrap();
                x = step.prev_sample;
                denoised.push(step.predicted_x0);
            }
            let file = format!("sampler_{}_{steps}_trace.npy", name(sampler));
            assert_close(&format!("{sampler:?} trace of {steps} steps"), &x, &feature_reference(&file), 1e-5);
            if sampler == Sampler::Lcm && steps == 8 {
                let denoised = Tensor::stack(&denoised, 0).unwrap();
                assert_close("LCM denoised at each step", &denoised, &feature_reference("sampler_lcm_8_denoised.npy"), 1e-5);
            }
        }
    }
}

fn spec(sampler: Sampler, steps: usize, guidance: f64, seed: Option<u64>) -> GenerationSpec {
    GenerationSpec { num_images: 2, steps, guidance, size: Some(32), seed, sampler, ..Default::default() }
}

fn check_case(case: &str, latents: &Tensor, images: &[Vec<u8>]) {
    let (expected_latents, expected_images) =
        (feature_reference(&format!("gen_{case}_latents.npy")), feature_reference(&format!("gen_{case}_images.npy")));
    check_generation(case, latents, images, &expected_latents, &expected_images, 1e-4);
}

#[test]
fn seeded_generations_match_diffusers_for_every_sampler() {
    for sampler in Sampler::ALL.into_iter().filter(|&s| s != Sampler::Lcm) {
        let (latents, images) = generate(DType::F32, spec(sampler, 4, 3.0, Some(42)), None);
        check_case(&format!("sampler_{}", name(sampler)), &latents, &images);
    }
    for steps in [1, 2, 4, 8] {
        let (latents, images) = generate(DType::F32, spec(Sampler::Lcm, steps, 1.0, Some(42)), None);
        check_case(&format!("sampler_lcm_{steps}"), &latents, &images);
    }
}

/// From given latents (scaled by the sampler's initial σ); euler-a and lcm take their step noise
/// from the per-image generators, which then start fresh.
#[test]
fn generations_from_given_latents_match_diffusers_for_every_sampler() {
    for sampler in Sampler::ALL {
        let guidance = if sampler == Sampler::Lcm { 1.0 } else { 3.0 };
        let seed = sampler.draws_noise().then_some(42);
        let (latents, images) = generate(DType::F32, spec(sampler, 4, guidance, seed), Some(reference("gen_noise.npy")));
        check_case(&format!("sampler_{}_noise", name(sampler)), &latents, &images);
    }
}

/// The stream continues: the second draw of a generator is not the first draw of a fresh one.
#[test]
fn a_generator_continues_its_stream() {
    let mut generator = TorchGenerator::new(42);
    let first = generator.randn_tensor((1, 4, 16, 16), &Device::Cpu).unwrap();
    let second = generator.randn_tensor((1, 4, 16, 16), &Device::Cpu).unwrap();
    let fresh = TorchGenerator::new(42).randn_tensor((1, 4, 16, 16), &Device::Cpu).unwrap();
    assert_eq!(to_f32_vec(&first), to_f32_vec(&fresh));
    assert_ne!(to_f32_vec(&second), to_f32_vec(&fresh));
}
