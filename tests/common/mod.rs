//! Helpers shared by the integration tests: the committed tiny fixture and error measures.
#![allow(dead_code)] // each test binary uses its own subset

pub mod mock_hub;

use std::path::PathBuf;

use candle_core::{DType, Tensor};

/// `tests/fixtures/tiny`: tiny models in the real on-disk layout and the reference outputs that
/// `tools/make_fixtures.py` computed with torch/diffusers/transformers.
pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

pub fn models_dir() -> PathBuf {
    fixture().join("models")
}

pub fn reference(name: &str) -> Tensor {
    let path = fixture().join("reference").join(name);
    Tensor::read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A reference output of `tools/make_feature_fixtures.py` (tests/fixtures/tiny/reference/features).
pub fn feature_reference(name: &str) -> Tensor {
    reference(&format!("features/{name}"))
}

/// The target expression the feature references were made with (`features/expression.npy`).
pub fn feature_expression() -> arc2face_studio::expression::Expression {
    let values: Vec<f32> = feature_reference("expression.npy").flatten_all().unwrap().to_vec1().unwrap();
    arc2face_studio::expression::Expression::from_values(&values).unwrap()
}

/// `tests/fixtures/tiny/reference/features/params.json`: how each feature reference was made.
pub fn feature_params() -> serde_json::Value {
    let path = fixture().join("reference/features/params.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The tiny fixture's noise schedule (SD1.5's scheduler config).
pub fn noise_schedule() -> arc2face_studio::diffusion::schedulers::NoiseSchedule {
    use arc2face_studio::diffusion::schedulers::{NoiseSchedule, SchedulerConfig};
    let config: SchedulerConfig = arc2face_studio::models::read_json(&models_dir().join("scheduler/scheduler_config.json")).unwrap();
    NoiseSchedule::from_config(&config).unwrap()
}

/// Runs `spec` on the tiny models (on the CPU, in `dtype`) with the reference identity: the
/// final latents of every image, and the images' pixels.
pub fn generate(dtype: DType, spec: arc2face_studio::engine::GenerationSpec, initial_latents: Option<Tensor>) -> (Tensor, Vec<Vec<u8>>) {
    let job = arc2face_studio::engine::Job {
        initial_latents,
        ..arc2face_studio::engine::Job::new(spec, reference("id_embedding.npy").to_vec1().unwrap())
    };
    run_job(dtype, &job)
}

/// Runs `job` on the tiny models (on the CPU, in `dtype`): the final latents of every image,
/// and the images' pixels.
pub fn run_job(dtype: DType, job: &arc2face_studio::engine::Job) -> (Tensor, Vec<Vec<u8>>) {
    use arc2face_studio::engine::{Arc2FacePipeline, Flow, Runtime};
    let runtime = Runtime { device: candle_core::Device::Cpu, dtype };
    let mut pipeline = Arc2FacePipeline::load(&arc2face_studio::models::ModelsDir::new(models_dir()), &runtime).unwrap();
    let (mut latents, mut images) = (Vec::new(), Vec::new());
    pipeline
        .run(job, &mut |_| Flow::Continue, &mut |generated| {
            latents.push(generated.latents);
            images.push(generated.image.into_raw());
            Ok(())
        })
        .unwrap();
    (Tensor::cat(&latents, 0).unwrap(), images)
}

/// Checks a generation against a reference's latents (relative max error ≤ `tolerance`) and
/// 8-bit images (mean ≤ 0.1, max ≤ 1 level: a rounding apart).
pub fn check_generation(
    what: &str,
    latents: &Tensor,
    images: &[Vec<u8>],
    expected_latents: &Tensor,
    expected_images: &Tensor,
    tolerance: f32,
) {
    assert_close(&format!("{what} latents"), latents, expected_latents, tolerance);
    let expected: Vec<u8> = expected_images.flatten_all().unwrap().to_vec1().unwrap();
    let per_image = expected.len() / images.len();
    for (i, image) in images.iter().enumerate() {
        let (mean, max) = image_difference(image, &expected[i * per_image..(i + 1) * per_image]);
        assert!(mean <= 0.1 && max <= 1, "{what} image {i}: mean {mean:.3}, max {max} levels");
    }
}

pub fn to_f32_vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// max |a − b| / max |b|: the error relative to the reference's scale.
pub fn relative_max_error(actual: &Tensor, expected: &Tensor) -> f32 {
    assert_eq!(actual.dims(), expected.dims(), "shapes differ");
    let (a, b) = (to_f32_vec(actual), to_f32_vec(expected));
    let max_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    max_diff / scale
}

pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tolerance: f32) {
    let error = relative_max_error(actual, expected);
    assert!(error <= tolerance, "{what}: relative max error {error:.3e} > {tolerance:.1e}");
    eprintln!("{what}: relative max error {error:.3e} (tolerance {tolerance:.1e})");
}

/// Mean and max absolute difference between two 8-bit images, in levels.
pub fn image_difference(actual: &[u8], expected: &[u8]) -> (f64, u8) {
    assert_eq!(actual.len(), expected.len(), "image sizes differ");
    let diffs: Vec<u8> = actual.iter().zip(expected).map(|(a, b)| a.abs_diff(*b)).collect();
    let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
    (mean, diffs.iter().copied().max().unwrap_or(0))
}

/// A models folder in `dir` with every tiny model (generation, ControlNet, adapters, LoRAs),
/// the tiny face detector and a recognizer whose 24 values fit the tiny encoder (which takes at
/// most 32).
pub fn generation_and_face_models(dir: &std::path::Path) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let models = dir.join("models");
    for sub in ["arc2face", "encoder", "vae", "scheduler", "controlnet", "exp_adapter", "lcm_lora", "ref_adapter"] {
        std::fs::create_dir_all(models.join(sub)).unwrap();
        for entry in std::fs::read_dir(root.join("tiny/models").join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), models.join(sub).join(entry.file_name())).unwrap();
        }
    }
    std::fs::create_dir_all(models.join("antelopev2")).unwrap();
    let detector = "antelopev2/scrfd_10g_bnkps.onnx";
    std::fs::copy(root.join("faces/models").join(detector), models.join(detector)).unwrap();
    std::fs::copy(root.join("faces/arcface_d24.onnx"), models.join("arcface.onnx")).unwrap();
    models
}
