//! The pose ControlNet against diffusers (reference/features, written by
//! tools/make_feature_fixtures.py, with every weight of the tiny ControlNet random, its zero
//! convolutions included): its residuals for one call, and whole generations through
//! `StableDiffusionControlNetPipeline` at two scales, without guidance, and with a start/end
//! window.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;

use arc2face_studio::diffusion::controlnet::{ControlNet, ControlNetConfig};
use arc2face_studio::diffusion::unet::{Conditioning, UNet, UNetConfig};
use arc2face_studio::engine::{GenerationSpec, Job, PoseSpec, PoseTarget};
use arc2face_studio::models::{self, load_safetensors};

fn control_image() -> image::RgbImage {
    image::open(fixture().join("reference/features/control.png")).unwrap().to_rgb8()
}

#[test]
fn controlnet_residuals_and_the_unet_with_them_match_diffusers() {
    let models = models_dir();
    let config: ControlNetConfig = models::read_json(&models.join("controlnet/config.json")).unwrap();
    let vb = load_safetensors(&models.join("controlnet/diffusion_pytorch_model.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let controlnet = ControlNet::new(vb, &config).unwrap();
    let sample = reference("unet_sample.npy");
    let context = reference("unet_encoder_hidden_states.npy");
    let pixels: Vec<f32> = control_image().as_raw().iter().map(|&p| p as f32 / 255.0).collect();
    let image = Tensor::from_vec(pixels, (32, 32, 3), &Device::Cpu).unwrap().permute((2, 0, 1)).unwrap().unsqueeze(0).unwrap();
    let image = image.repeat((2, 1, 1, 1)).unwrap();
    let residuals = controlnet.forward(&sample, 500.0, &Conditioning::context(&context), &image, 1.0).unwrap();
    assert_eq!(residuals.down.len(), 9);
    for (i, residual) in residuals.down.iter().enumerate() {
        assert_close(&format!("down residual {i}"), residual, &feature_reference(&format!("controlnet_down_{i}.npy")), 1e-5);
    }
    assert_close("mid residual", &residuals.mid, &feature_reference("controlnet_mid.npy"), 1e-5);

    let unet_config: UNetConfig = models::read_json(&models.join("arc2face/config.json")).unwrap();
    let vb = load_safetensors(&models.join("arc2face/diffusion_pytorch_model.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let unet = UNet::new(vb, &unet_config).unwrap();
    let out = unet.forward(&sample, 500.0, &Conditioning { control: Some(&residuals), ..Conditioning::context(&context) }).unwrap();
    assert_close("UNet with the residuals", &out, &feature_reference("controlnet_unet_out.npy"), 1e-5);
}

fn posed(scale: f64, start: f64, end: f64) -> PoseSpec {
    PoseSpec { target: PoseTarget::Image { file: "control.png".into() }, controlnet_scale: scale, control_start: start, control_end: end }
}

fn run(case: &str, steps: usize, guidance: f64, pose: PoseSpec, from_noise: bool) {
    let seed = (!from_noise).then_some(42);
    let spec = GenerationSpec { num_images: 2, steps, guidance, size: Some(32), seed, pose: Some(pose), ..Default::default() };
    let initial_latents = from_noise.then(|| reference("gen_noise.npy"));
    let job = Job { spec, identity: reference("id_embedding.npy").to_vec1().unwrap(), initial_latents, pose_image: Some(control_image()) };
    let (latents, images) = run_job(DType::F32, &job);
    let (expected_latents, expected_images) =
        (feature_reference(&format!("gen_{case}_latents.npy")), feature_reference(&format!("gen_{case}_images.npy")));
    check_generation(case, &latents, &images, &expected_latents, &expected_images, 1e-4);
}

#[test]
fn pose_generations_match_diffusers_controlnet_pipeline() {
    run("control_s1", 5, 3.0, posed(1.0, 0.0, 1.0), true);
    run("control_s05", 5, 3.0, posed(0.5, 0.0, 1.0), true);
    run("control_nocfg", 5, 1.0, posed(1.0, 0.0, 1.0), true);
    run("control_window", 5, 3.0, posed(1.0, 0.2, 0.8), true);
    run("control_seed", 4, 3.0, posed(1.0, 0.0, 1.0), false);
}

/// The window of steps as diffusers computes it: 5 steps between 0.2 and 0.8 run the middle three.
#[test]
fn the_control_window_follows_diffusers() {
    let pose = posed(1.0, 0.2, 0.8);
    let active: Vec<bool> = (0..5).map(|i| pose.active_at(i, 5)).collect();
    assert_eq!(active, [false, true, true, true, false]);
}
