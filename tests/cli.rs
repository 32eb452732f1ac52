//! The `arc2face` binary's contract: stdout carries one PNG path per image and nothing else; a
//! bad input exits non-zero with one line on stderr that says what is wrong.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use common::*;

use arc2face_studio::gallery::metadata;

fn arc2face(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arc2face")).args(args).output().expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A copy of the fixture's models folder that a test may damage.
fn models_copy(dir: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
    let target = dir.join("models");
    copy(&models_dir(), &target);
    target
}

/// Asserts a failed run whose single stderr line ends in an error mentioning `needle`.
fn assert_fails_with(output: &Output, needle: &str) {
    let err = stderr(output);
    assert!(!output.status.success(), "expected failure, stderr: {err}");
    assert!(output.stdout.is_empty(), "stdout must stay empty on failure");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: ") && last.contains(needle), "stderr's last line {last:?} should mention {needle:?}");
}

#[test]
fn generate_from_noise_writes_pngs_with_metadata_and_latents() {
    let out = tempfile::tempdir().unwrap();
    let latents_path = out.path().join("latents.npy");
    let embedding = fixture().join("reference/id_embedding.npy");
    let noise = fixture().join("reference/gen_noise.npy");
    let output = arc2face(&[
        "generate",
        "--models",
        path_str(&models_dir()),
        "--embedding",
        path_str(&embedding),
        "--noise",
        path_str(&noise),
        "--steps",
        "5",
        "--guidance",
        "3.0",
        "--out",
        path_str(out.path()),
        "--latents-out",
        path_str(&latents_path),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let paths: Vec<PathBuf> = String::from_utf8(output.stdout).unwrap().lines().map(PathBuf::from).collect();
    assert_eq!(paths.len(), 2, "one line per image, nothing else");
    for path in &paths {
        let image = image::open(path).unwrap();
        assert_eq!((image.width(), image.height()), (32, 32));
        let meta = metadata::read_metadata(path).unwrap().expect("the JSON chunk");
        assert_eq!((meta.steps, meta.guidance, meta.width, meta.seed), (5, 3.0, 32, None));
        assert_eq!(meta.identity_source, "id_embedding.npy");
        assert!(meta.model_files.iter().any(|f| f.path == "arc2face/diffusion_pytorch_model.safetensors" && f.bytes > 0));
        let bytes = std::fs::read(path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("parameters") && text.contains("Steps: 5, Sampler: DPM++ 2M, CFG scale: 3"));
    }
    let latents = Tensor::read_npy(&latents_path).unwrap();
    assert_close("CLI latents", &latents, &reference("gen_cfg_latents.npy"), 1e-4);
}

#[test]
fn generate_with_a_random_seed_prints_it_and_never_overwrites() {
    let out = tempfile::tempdir().unwrap();
    let embedding = fixture().join("reference/id_embedding.npy");
    let run = || {
        arc2face(&[
            "generate",
            "--models",
            path_str(&models_dir()),
            "--embedding",
            path_str(&embedding),
            "--num-images",
            "1",
            "--steps",
            "1",
            "--seed",
            "7",
            "--out",
            path_str(out.path()),
        ])
    };
    let (first, second) = (run(), run());
    assert!(first.status.success() && second.status.success(), "{}", stderr(&second));
    let first_path = String::from_utf8(first.stdout).unwrap();
    let second_path = String::from_utf8(second.stdout).unwrap();
    assert!(first_path.trim().ends_with("arc2face-seed7.png"));
    assert!(second_path.trim().ends_with("arc2face-seed7-2.png"));
    assert_eq!(std::fs::read(first_path.trim()).unwrap(), std::fs::read(second_path.trim()).unwrap(), "same seed, same image");

    let random = arc2face(&[
        "generate",
        "--models",
        path_str(&models_dir()),
        "--embedding",
        path_str(&embedding),
        "--num-images",
        "1",
        "--steps",
        "1",
        "--out",
        path_str(out.path()),
    ]);
    assert!(random.status.success());
    let seed_line = stderr(&random).lines().find(|l| l.starts_with("seed: ")).map(str::to_owned);
    let seed = seed_line.expect("the random seed on stderr")[6..].parse::<u64>().unwrap();
    assert!(String::from_utf8(random.stdout).unwrap().contains(&format!("arc2face-seed{seed}")));
}

#[test]
fn missing_models_folder_is_named() {
    let out = tempfile::tempdir().unwrap();
    let embedding = fixture().join("reference/id_embedding.npy");
    let missing = out.path().join("no-models-here");
    let output = arc2face(&["generate", "--models", path_str(&missing), "--embedding", path_str(&embedding)]);
    assert_fails_with(&output, "models folder not found");
}

#[test]
fn malformed_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let models = models_copy(dir.path());
    std::fs::write(models.join("arc2face/config.json"), "{ not json").unwrap();
    let embedding = fixture().join("reference/id_embedding.npy");
    let output = arc2face(&["generate", "--models", path_str(&models), "--embedding", path_str(&embedding)]);
    assert_fails_with(&output, "arc2face/config.json: malformed config");
}

#[test]
fn truncated_weights_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let models = models_copy(dir.path());
    for file in ["arc2face/diffusion_pytorch_model.safetensors", "encoder/pytorch_model.bin"] {
        let path = models.join(file);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let embedding = fixture().join("reference/id_embedding.npy");
        let output = arc2face(&["generate", "--models", path_str(&models), "--embedding", path_str(&embedding)]);
        assert_fails_with(&output, file);
        std::fs::write(&path, &bytes).unwrap();
    }
}

#[test]
fn bad_requests_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let too_long = dir.path().join("too_long.npy");
    Tensor::ones(100, candle_core::DType::F32, &Device::Cpu).unwrap().write_npy(&too_long).unwrap();
    let models = models_dir();
    let base = ["generate", "--models", path_str(&models), "--out", path_str(dir.path())];
    let run = |extra: &[&str]| arc2face(&[&base[..], extra].concat());
    assert_fails_with(&run(&["--embedding", path_str(&too_long)]), "has 100 values; this encoder takes 1 to 32");
    let embedding = fixture().join("reference/id_embedding.npy");
    assert_fails_with(&run(&["--embedding", path_str(&embedding), "--size", "30"]), "size must be a multiple of 8");
    assert_fails_with(&run(&["--embedding", path_str(&embedding), "--steps", "0"]), "steps must be between 1 and 1000");
    let not_npy = dir.path().join("not.npy");
    std::fs::write(&not_npy, "hello").unwrap();
    assert_fails_with(&run(&["--embedding", path_str(&not_npy)]), "not a readable .npy file");
    assert_fails_with(&run(&["--photo", "face.jpg"]), "antelopev2/scrfd_10g_bnkps.onnx: missing");
    assert_fails_with(&run(&["--embedding", path_str(&embedding), "--device", "tpu"]), "unknown device");
}
