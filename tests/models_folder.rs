//! `arc2face models status|verify`: every file named as present, missing or wrong, and the traps
//! of the Python setup recognised — a truncated file, insightface's recognizer in place of
//! Arc2Face's, the antelopev2 folder nested in itself.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::path::Path;
use std::process::Output;

use arc2face_studio::models::{self, ALL_FILES};

fn models_command(models: &Path, action: &str) -> (Output, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_arc2face"))
        .args(["models", "--models", models.to_str().unwrap(), action])
        .env_remove("ARC2FACE_MODELS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout)
}

/// The status line of one file.
fn line(stdout: &str, file: models::ModelFile) -> &str {
    stdout.lines().find(|l| l.starts_with(file.relative_path)).unwrap_or_else(|| panic!("no line for {}:\n{stdout}", file.relative_path))
}

fn truncate(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

#[test]
fn status_of_an_empty_folder_names_every_missing_file_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (output, stdout) = models_command(dir.path(), "status");
    assert!(!output.status.success());
    for file in ALL_FILES {
        assert!(line(&stdout, file).ends_with("missing"), "{stdout}");
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = format!("{0} of {0} model files missing or wrong", ALL_FILES.len());
    assert!(stderr.contains(&summary) && stderr.contains("arc2face models download"), "{stderr}");
}

#[test]
fn verify_accepts_good_files_and_names_each_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let models = common::generation_and_face_models(dir.path());
    let (output, stdout) = models_command(&models, "verify");
    for file in ALL_FILES {
        assert!(line(&stdout, file).contains("present ("), "{stdout}");
    }
    assert!(output.status.success(), "every file of the tiny models is there");

    truncate(&models.join(models::VAE_WEIGHTS.relative_path));
    truncate(&models.join(models::ENCODER_WEIGHTS.relative_path));
    truncate(&models.join(models::DETECTOR.relative_path));
    // A recognizer of the wrong kind under the right name (here the detector).
    std::fs::copy(
        common::generation_and_face_models(&dir.path().join("other")).join(models::DETECTOR.relative_path),
        models.join("arcface.onnx"),
    )
    .unwrap();
    std::fs::write(models.join(models::UNET_CONFIG.relative_path), "{\"truncated\": ").unwrap();
    let (output, stdout) = models_command(&models, "verify");
    assert!(!output.status.success());
    assert!(line(&stdout, models::VAE_WEIGHTS).contains("wrong: truncated:"), "{stdout}");
    assert!(line(&stdout, models::ENCODER_WEIGHTS).contains("wrong: not a readable torch pickle"), "{stdout}");
    assert!(line(&stdout, models::DETECTOR).contains("wrong: not a readable ONNX model (truncated)"), "{stdout}");
    assert!(line(&stdout, models::RECOGNIZER).contains("expected a 112×112 ArcFace recognizer"), "{stdout}");
    assert!(
        line(&stdout, models::UNET_CONFIG).contains("wrong:") && line(&stdout, models::UNET_CONFIG).contains("malformed config"),
        "{stdout}"
    );
    assert!(line(&stdout, models::SCHEDULER_CONFIG).contains("present ("), "{stdout}");
}

#[test]
fn status_recognises_glintr100_and_a_nested_antelopev2_folder() {
    let dir = tempfile::tempdir().unwrap();
    let models = common::generation_and_face_models(dir.path());
    std::fs::rename(models.join("arcface.onnx"), models.join("antelopev2/glintr100.onnx")).unwrap();
    std::fs::create_dir_all(models.join("antelopev2/antelopev2")).unwrap();
    std::fs::rename(models.join(models::DETECTOR.relative_path), models.join("antelopev2/antelopev2/scrfd_10g_bnkps.onnx")).unwrap();
    let (output, stdout) = models_command(&models, "status");
    assert!(!output.status.success());
    let recognizer = line(&stdout, models::RECOGNIZER);
    assert!(recognizer.contains("glintr100.onnx instead") && recognizer.contains("wrong identity"), "{recognizer}");
    let detector = line(&stdout, models::DETECTOR);
    assert!(detector.contains("nested folder") && detector.contains("antelopev2/antelopev2/scrfd_10g_bnkps.onnx"), "{detector}");

    // `download` moves the nested detector into place instead of fetching it again (nothing
    // else is fetched: no hub is reachable at this address).
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_arc2face"))
        .args(["models", "--models", models.to_str().unwrap(), "download", "--only", models::DETECTOR.relative_path])
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(models.join(models::DETECTOR.relative_path).is_file());
    assert!(!models.join("antelopev2/antelopev2/scrfd_10g_bnkps.onnx").exists());
}

#[test]
fn verify_compares_with_the_checksum_recorded_at_download() {
    let dir = tempfile::tempdir().unwrap();
    let models_dir = common::generation_and_face_models(dir.path());
    let models = models::ModelsDir::new(&models_dir);
    let config = models.path(models::SCHEDULER_CONFIG);
    let size = std::fs::metadata(&config).unwrap().len();
    let recorded = |hex: &str| models::check::Recorded { size, checksum: models::hub::Checksum::Sha256(hex.to_string()) };
    let actual = models::hub::sha256_of(&config).unwrap();
    models::check::Checksums::record(&models, models::SCHEDULER_CONFIG, recorded(&actual)).unwrap();
    let (_, stdout) = models_command(&models_dir, "verify");
    assert!(line(&stdout, models::SCHEDULER_CONFIG).contains("present ("), "{stdout}");

    models::check::Checksums::record(&models, models::SCHEDULER_CONFIG, recorded(&"0".repeat(64))).unwrap();
    let (_, stdout) = models_command(&models_dir, "verify");
    assert!(line(&stdout, models::SCHEDULER_CONFIG).contains("differs from the one recorded at download"), "{stdout}");

    // `status` alone already sees a size that differs from the download's.
    std::fs::write(&config, "{}").unwrap();
    let (_, stdout) = models_command(&models_dir, "status");
    assert!(line(&stdout, models::SCHEDULER_CONFIG).contains("truncated or replaced"), "{stdout}");
}
