//! The Expression Adapter against diffusers, which loads the same state dict as an IP-Adapter
//! and is given `ip_adapter_image_embeds` with zeros for the unconditional half
//! (reference/features, written by tools/make_feature_fixtures.py): the UNet output with the
//! linear and the MLP projection, whole generations at scales 1 and 0.5, without guidance, and
//! together with the pose ControlNet.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::*;

use arc2face_studio::diffusion::expression_adapter::ExpressionAdapter;
use arc2face_studio::diffusion::unet::{Conditioning, ExpressionTokens, UNet, UNetConfig};
use arc2face_studio::engine::{ExpressionSpec, GenerationSpec, Job, PoseSpec, PoseTarget};
use arc2face_studio::models::{self, load_safetensors};

fn state_dict(path: &std::path::Path, key: &str) -> HashMap<String, Tensor> {
    candle_core::pickle::read_all_with_key(path, Some(key)).unwrap().into_iter().collect()
}

fn unet_output_with_adapter(file: &std::path::Path) -> Tensor {
    let config: UNetConfig = models::read_json(&models_dir().join("arc2face/config.json")).unwrap();
    let vb = load_safetensors(&models_dir().join("arc2face/diffusion_pytorch_model.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let mut unet = UNet::new(vb, &config).unwrap();
    let adapter =
        ExpressionAdapter::new(&state_dict(file, "image_proj"), &state_dict(file, "ip_adapter"), unet.cross_attention_layers()).unwrap();
    unet.attach_expression_adapter(adapter.layers.clone()).unwrap();
    let values = Tensor::new(&feature_expression().values()[..], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let tokens = adapter.tokens(&Tensor::cat(&[&values.zeros_like().unwrap(), &values], 0).unwrap()).unwrap();
    let context = reference("unet_encoder_hidden_states.npy");
    let conditioning =
        Conditioning { expression: Some(ExpressionTokens { tokens: &tokens, scale: 1.0 }), ..Conditioning::context(&context) };
    unet.forward(&reference("unet_sample.npy"), 500.0, &conditioning).unwrap()
}

#[test]
fn the_unet_with_the_adapter_matches_diffusers_for_both_projections() {
    let linear = unet_output_with_adapter(&models_dir().join("exp_adapter/exp_adapter.bin"));
    assert_close("linear projection", &linear, &feature_reference("exp_unet_out.npy"), 1e-5);
    let mlp = unet_output_with_adapter(&fixture().join("reference/features/exp_adapter_mlp.bin"));
    assert_close("MLP projection", &mlp, &feature_reference("exp_mlp_unet_out.npy"), 1e-5);
}

fn run(case: &str, guidance: f64, scale: f64, with_pose: bool) {
    let pose = with_pose.then(|| PoseSpec { target: PoseTarget::Image { file: "control.png".into() }, ..Default::default() });
    let spec = GenerationSpec {
        num_images: 2,
        steps: 5,
        guidance,
        size: Some(32),
        seed: None,
        expression: Some(ExpressionSpec { expression: feature_expression(), scale }),
        pose,
        ..Default::default()
    };
    let pose_image = with_pose.then(|| image::open(fixture().join("reference/features/control.png")).unwrap().to_rgb8());
    let job = Job {
        initial_latents: Some(reference("gen_noise.npy")),
        pose_image,
        ..Job::new(spec, reference("id_embedding.npy").to_vec1().unwrap())
    };
    let (latents, images) = run_job(DType::F32, &job);
    let (expected_latents, expected_images) =
        (feature_reference(&format!("gen_{case}_latents.npy")), feature_reference(&format!("gen_{case}_images.npy")));
    check_generation(case, &latents, &images, &expected_latents, &expected_images, 1e-4);
}

#[test]
fn expression_generations_match_diffusers() {
    run("expr1", 3.0, 1.0, false);
    run("expr05", 3.0, 0.5, false);
    // Without guidance only the conditional pass runs, and it gets the adapter.
    run("expr_nocfg", 1.0, 1.0, false);
}

#[test]
fn expression_and_pose_together_match_diffusers() {
    run("expr_control", 3.0, 1.0, true);
}

/// A state dict whose projection is none diffusers knows is refused naming its keys.
#[test]
fn an_unknown_projection_is_refused_by_its_keys() {
    let odd: HashMap<String, Tensor> = [("latents".to_string(), Tensor::zeros((1, 4, 8), DType::F32, &Device::Cpu).unwrap())].into();
    let error = ExpressionAdapter::new(&odd, &HashMap::new(), 0).err().expect("refused");
    assert!(error.contains("keys latents"), "{error}");
}
