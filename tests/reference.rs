//! The Reference Adapter against the official demo's reference path run by
//! tools/make_reference_fixtures.py against diffusers (reference/features/ref): the photo's
//! latents (the VAE posterior's mean), the bank of the reference pass, one UNet call with the
//! LoRA and the bank, and whole generations with guidance, without, and with the Expression
//! Adapter. A bank that is left out must fail these comparisons: the last test shows it does.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;

use arc2face_studio::diffusion::lora::{LoraDeltas, UNetLayout};
use arc2face_studio::diffusion::reference_adapter::{ReferenceBank, ReferenceCall};
use arc2face_studio::diffusion::unet::{Conditioning, UNet, UNetConfig};
use arc2face_studio::diffusion::vae::{VaeConfig, VaeEncoder};
use arc2face_studio::engine::{ExpressionSpec, GenerationSpec, Job, ReferenceSpec};
use arc2face_studio::models::{self, load_safetensors, weights::SafetensorsFile};

fn ref_reference(name: &str) -> Tensor {
    feature_reference(&format!("ref/{name}"))
}

fn reference_image() -> image::RgbImage {
    image::open(fixture().join("reference/features/ref/reference_image.png")).unwrap().to_rgb8()
}

const BLOCKS: usize = 11;

/// The fixture's bank, one row per block (its rows are identical).
fn fixture_bank() -> ReferenceBank {
    ReferenceBank::from_entries((0..BLOCKS).map(|i| ref_reference(&format!("ref_bank_{i}.npy")).narrow(0, 0, 1).unwrap()).collect())
}

fn unet(with_lora: bool) -> UNet {
    let config: UNetConfig = models::read_json(&models_dir().join("arc2face/config.json")).unwrap();
    let weights = models_dir().join("arc2face/diffusion_pytorch_model.safetensors");
    let mut unet = UNet::new(load_safetensors(&weights, DType::F32, &Device::Cpu).unwrap(), &config).unwrap();
    if with_lora {
        let header = SafetensorsFile::open(&weights).unwrap();
        let layout = UNetLayout::new(header.names().filter_map(|name| Some((name, header.shape(name)?))), &config);
        let file = SafetensorsFile::open(&models_dir().join("ref_adapter/pytorch_lora_weights.safetensors")).unwrap();
        let mut deltas = LoraDeltas::default();
        deltas.add(&file.read_all().unwrap(), file.metadata(), 1.0, &layout).unwrap();
        unet.attach_side_paths(deltas.into_side_paths(DType::F32, &Device::Cpu).unwrap()).unwrap();
    }
    unet
}

#[test]
fn the_photo_latents_and_the_bank_match_the_reference_pass() {
    let config: VaeConfig = models::read_json(&models_dir().join("vae/config.json")).unwrap();
    let vb = load_safetensors(&models_dir().join("vae/diffusion_pytorch_model.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let encoder = VaeEncoder::new(vb, &config).unwrap();
    let pixels: Vec<f32> = reference_image().as_raw().iter().map(|&p| p as f32 / 255.0 * 2.0 - 1.0).collect();
    let pixels = Tensor::from_vec(pixels, (32, 32, 3), &Device::Cpu).unwrap().permute((2, 0, 1)).unwrap().unsqueeze(0).unwrap();
    let latents = encoder.encode_mean(&pixels).unwrap();
    assert_close("photo latents", &latents, &ref_reference("ref_latents.npy").narrow(0, 0, 1).unwrap(), 1e-5);

    // The reference pass runs with the LoRA attached: it must switch it off.
    let bank = unet(true).reference_bank(&latents, &reference("encoder_cond.npy")).unwrap();
    assert_eq!(bank.len(), BLOCKS);
    for i in 0..BLOCKS {
        let expected = ref_reference(&format!("ref_bank_{i}.npy")).narrow(0, 0, 1).unwrap();
        assert_close(&format!("bank entry {i}"), &bank.entry(i, 1).unwrap(), &expected, 1e-4);
    }
}

/// Under guidance the unconditional row sees the LoRA only, the conditional row the LoRA and
/// the bank.
fn unet_call(bank: &ReferenceBank) -> Tensor {
    let context = reference("unet_encoder_hidden_states.npy");
    let call = Some(ReferenceCall::Attend { bank, lora_scale: 0.8, guided: true });
    unet(true).forward(&reference("unet_sample.npy"), 500.0, &Conditioning { reference: call, ..Conditioning::context(&context) }).unwrap()
}

#[test]
fn one_unet_call_with_the_lora_and_the_bank_matches() {
    assert_close("UNet with LoRA and bank", &unet_call(&fixture_bank()), &ref_reference("ref_unet_out.npy"), 1e-5);
}

fn generate(case: &str, guidance: f64, expression: bool) -> (Tensor, Vec<Vec<u8>>) {
    let expression = expression.then(|| ExpressionSpec { expression: feature_expression(), scale: 1.0 });
    let spec = GenerationSpec {
        num_images: 2,
        steps: 5,
        guidance,
        size: Some(32),
        seed: None,
        expression,
        reference: Some(ReferenceSpec { photo: "reference_image.png".into(), face: None, scale: 0.8 }),
        ..Default::default()
    };
    let job = Job {
        initial_latents: Some(reference("gen_noise.npy")),
        reference_image: Some(reference_image()),
        ..Job::new(spec, reference("id_embedding.npy").to_vec1().unwrap())
    };
    let (latents, images) = run_job(DType::F32, &job);
    let (expected_latents, expected_images) =
        (ref_reference(&format!("gen_{case}_latents.npy")), ref_reference(&format!("gen_{case}_images.npy")));
    check_generation(case, &latents, &images, &expected_latents, &expected_images, 1e-4);
    (latents, images)
}

#[test]
fn generations_keeping_the_photo_look_match_the_demo() {
    generate("ref", 3.0, false);
    generate("ref_nocfg", 1.0, false);
    generate("ref_expr", 3.0, true);
}

/// The bank matters at the tolerance the tests use: with empty entries (no tokens: plain
/// self-attention, what the demo gives when no reference pass ran) the unconditional row is the
/// same and the conditional row lands far outside it.
#[test]
fn without_the_bank_the_comparison_fails() {
    let empty = ReferenceBank::from_entries(
        (0..BLOCKS)
            .map(|i| {
                let channels = ref_reference(&format!("ref_bank_{i}.npy")).dim(2).unwrap();
                Tensor::zeros((1, 0, channels), DType::F32, &Device::Cpu).unwrap()
            })
            .collect(),
    );
    let (without, expected) = (unet_call(&empty), ref_reference("ref_unet_out.npy"));
    let row = |t: &Tensor, i: usize| t.narrow(0, i, 1).unwrap();
    assert_close("unconditional row, LoRA only", &row(&without, 0), &row(&expected, 0), 1e-5);
    let error = relative_max_error(&row(&without, 1), &row(&expected, 1));
    assert!(error > 0.05, "without the bank the conditional row is off by {error}, which the 1e-5 tolerance catches");
}
