//! The `arc2face` binary's contract: stdout carries one PNG path per image and nothing else; a
//! bad input exits non-zero with one line on stderr that says what is wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

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
        assert_eq!((meta.spec.steps, meta.spec.guidance, meta.width, meta.spec.seed), (5, 3.0, 32, None));
        assert_eq!(meta.spec.identity.to_string(), "id_embedding.npy");
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
    let pixels = |path: &str| image::open(path.trim()).unwrap().to_rgb8().into_raw();
    assert_eq!(pixels(&first_path), pixels(&second_path), "same seed, same image");

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

/// The catalogue of bad input: each ends with one line naming the problem, before any model
/// loads or any file is written.
#[test]
fn bad_requests_say_what_is_wrong_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let npy = |name: &str, values: Vec<f32>, shape: &[usize]| {
        let path = dir.path().join(name);
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap().write_npy(&path).unwrap();
        path
    };
    let too_long = npy("too_long.npy", vec![1.0; 100], &[100]);
    let not_finite = npy("nan.npy", [vec![f32::NAN], vec![1.0; 23]].concat(), &[24]);
    let zeros = npy("zeros.npy", vec![0.0; 24], &[24]);
    let matrix = npy("matrix.npy", vec![1.0; 48], &[2, 24]);
    let noise_rank = npy("noise_rank.npy", vec![0.5; 64], &[4, 16]);
    let noise_shape = npy("noise_shape.npy", vec![0.5; 4 * 4 * 8 * 8], &[4, 4, 8, 8]);
    let noise_nan = npy("noise_nan.npy", [vec![f32::INFINITY], vec![0.5; 2 * 4 * 16 * 16 - 1]].concat(), &[2, 4, 16, 16]);
    let not_npy = dir.path().join("not.npy");
    std::fs::write(&not_npy, "hello").unwrap();
    let a_file = dir.path().join("a_file");
    std::fs::write(&a_file, "").unwrap();
    let embedding = fixture().join("reference/id_embedding.npy");
    let (models, embedding, out_dir) = (models_dir(), path_str(&embedding).to_string(), path_str(&out).to_string());

    let run = |extra: &[&str]| arc2face(&[&["generate", "--models", path_str(&models), "--out", &out_dir][..], extra].concat());
    let with_id = |extra: &[&str]| run(&[&["--embedding", &embedding][..], extra].concat());
    let cases: Vec<(Output, &str)> = vec![
        (run(&["--embedding", path_str(&too_long)]), "has 100 values; this encoder takes 1 to 32"),
        (run(&["--embedding", path_str(&not_finite)]), "values that are not finite"),
        (run(&["--embedding", path_str(&zeros)]), "the identity vector is all zeros"),
        (run(&["--embedding", path_str(&matrix)]), "expected an identity vector of shape (D,) or (1, D), got [2, 24]"),
        (run(&["--embedding", path_str(&not_npy)]), "not a readable .npy file"),
        (with_id(&["--noise", path_str(&noise_rank)]), "expected latents of shape (N, C, h, w), got [4, 16]"),
        (with_id(&["--noise", path_str(&noise_shape), "--size", "32"]), "the initial latents have shape [4, 4, 8, 8]"),
        (with_id(&["--noise", path_str(&noise_nan)]), "initial latents hold values that are not finite"),
        (with_id(&["--size", "30"]), "size must be a multiple of 8"),
        (with_id(&["--size", "0"]), "size must be a multiple of 8"),
        (with_id(&["--size", "4096"]), "size must be a multiple of 8 between 8 and 1024"),
        (with_id(&["--steps", "0"]), "steps must be between 1 and 1000"),
        (with_id(&["--threads", "0"]), "invalid value '0' for '--threads <THREADS>'"),
        (with_id(&["--num-images", "0"]), "the number of images must be between 1 and 64"),
        (with_id(&["--guidance", "NaN"]), "guidance must be a number from 0 to 50"),
        (with_id(&["--guidance=-1"]), "guidance must be a number from 0 to 50"),
        (with_id(&["--device", "tpu"]), "unknown device"),
        (with_id(&["--device", "cpu", "--dtype", "bf16"]), "bf16 does not run on the CPU"),
        (with_id(&["--from", path_str(&not_npy)]), "not a readable PNG"),
        (run(&["--photo", "face.jpg"]), "antelopev2/scrfd_10g_bnkps.onnx: missing"),
    ];
    for (output, needle) in &cases {
        assert_fails_with(output, needle);
        let err = stderr(output);
        assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "one error line: {err}");
        assert!(!err.contains("stack backtrace") && err.len() < 2000, "no backtrace: {err}");
    }
    let written = std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
    assert_eq!(written, 0, "nothing written for a bad request");
    let unwritable = path_str(&a_file).to_string() + "/out";
    assert_fails_with(
        &arc2face(&["generate", "--models", path_str(&models), "--embedding", &embedding, "--out", &unwritable]),
        "cannot create the output folder",
    );
}

/// An identity vector must be as long as the recognizer's output when the models folder has one.
#[test]
fn an_identity_of_the_wrong_length_for_the_recognizer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let models = generation_and_face_models(dir.path());
    let short = dir.path().join("short.npy");
    Tensor::ones(20, candle_core::DType::F32, &Device::Cpu).unwrap().write_npy(&short).unwrap();
    let output = arc2face(&["generate", "--models", path_str(&models), "--embedding", path_str(&short), "--out", path_str(dir.path())]);
    assert_fails_with(&output, "20 values, but the recognizer (arcface.onnx) gives 24");
}

/// `--from` takes every setting from a PNG; the identity comes as usual, and the image comes out
/// the same, pixel for pixel. Flags given override the PNG's settings.
#[test]
fn generate_from_a_png_makes_the_same_image_again() {
    let dir = tempfile::tempdir().unwrap();
    let (embedding, models) = (fixture().join("reference/id_embedding.npy"), models_dir());
    let generate = |extra: &[&str], out: &Path| {
        let base = ["generate", "--models", path_str(&models), "--embedding", path_str(&embedding), "--out", path_str(out)];
        let output = arc2face(&[&base[..], extra].concat());
        assert!(output.status.success(), "{}", stderr(&output));
        String::from_utf8(output.stdout).unwrap().lines().map(PathBuf::from).collect::<Vec<_>>()
    };
    let batch = generate(&["--seed", "5", "--num-images", "2", "--steps", "3", "--guidance", "2.0", "--size", "24"], &dir.path().join("a"));
    let again = generate(&["--from", path_str(&batch[1])], &dir.path().join("b"));
    assert_eq!(again.len(), 1, "one image: the one the PNG records");
    let pixels = |path: &Path| image::open(path).unwrap().to_rgb8().into_raw();
    assert_eq!(pixels(&again[0]), pixels(&batch[1]), "same settings and identity, same pixels");
    let meta = metadata::read_metadata(&again[0]).unwrap().unwrap();
    assert_eq!((meta.spec.seed, meta.spec.steps, meta.spec.guidance, meta.width), (Some(6), 3, 2.0, 24));

    let overridden = generate(&["--from", path_str(&batch[1]), "--steps", "2"], &dir.path().join("c"));
    let meta = metadata::read_metadata(&overridden[0]).unwrap().unwrap();
    assert_eq!((meta.spec.seed, meta.spec.steps), (Some(6), 2), "the flag wins, the rest comes from the PNG");

    // A PNG written by version 0.1.0 restores the same way.
    let legacy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy/cli-seed7.png");
    let remade = generate(&["--from", path_str(&legacy)], &dir.path().join("d"));
    let (mean, max) = image_difference(&pixels(&remade[0]), &pixels(&legacy));
    assert!(mean < 0.05 && max <= 1, "the old PNG's image again: mean {mean}, max {max} levels");
}

/// Ctrl+C (SIGINT) stops a run after the current step: the images finished are there, whole, and
/// nothing else is.
#[test]
fn an_interrupted_run_leaves_only_whole_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let embedding = fixture().join("reference/id_embedding.npy");
    let child = Command::new(env!("CARGO_BIN_EXE_arc2face"))
        .args(["generate", "--models", path_str(&models_dir()), "--embedding", path_str(&embedding), "--seed", "1"])
        .args(["--num-images", "64", "--steps", "1000", "--out", path_str(dir.path())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::fs::read_dir(dir.path()).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png")).count() == 0
    {
        assert!(started.elapsed().as_secs() < 120, "no image within two minutes");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("interrupted"), "{}", stderr(&output));
    let listed: Vec<PathBuf> = String::from_utf8(output.stdout).unwrap().lines().map(PathBuf::from).collect();
    let files: Vec<PathBuf> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!listed.is_empty() && listed.len() < 64);
    assert_eq!(files.len(), listed.len(), "nothing but the PNGs listed: {files:?}");
    for path in &listed {
        assert!(image::open(path).is_ok(), "{} is whole", path.display());
    }
}

/// `--pose FILE.json` renders the head for the ControlNet: the same image as `render-pose`'s
/// conditioning image given with `--pose-image`, and `--from` brings the pose back.
#[test]
fn a_pose_file_generates_as_its_render_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let (embedding, models) = (fixture().join("reference/id_embedding.npy"), models_dir());
    let pose_file = dir.path().join("pose.json");
    std::fs::write(&pose_file, r#"{"yaw": -30, "jaw": 0.4}"#).unwrap();
    let render = dir.path().join("render.png");
    let output = arc2face(&["render-pose", path_str(&pose_file), "--size", "32", "--out", path_str(&render)]);
    assert!(output.status.success(), "{}", stderr(&output));
    let pose = arc2face_studio::pose::HeadPose { yaw: -30.0, jaw: 0.4, ..Default::default() };
    let head = arc2face_studio::pose::HeadModel::builtin().unwrap();
    assert_eq!(image::open(&render).unwrap().to_rgb8(), arc2face_studio::pose::render_normals(&head, &pose, 32));

    let generate = |extra: &[&str], out: &str| {
        let out = dir.path().join(out);
        let base = ["generate", "--models", path_str(&models), "--embedding", path_str(&embedding), "--out", path_str(&out)];
        let settings = ["--seed", "2", "--num-images", "1", "--steps", "2", "--size", "32"];
        let output = arc2face(&[&base[..], &settings, extra].concat());
        assert!(output.status.success(), "{}", stderr(&output));
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    };
    let pixels = |path: &Path| image::open(path).unwrap().to_rgb8().into_raw();
    let posed = generate(&["--pose", path_str(&pose_file)], "a");
    let from_render = generate(&["--pose-image", path_str(&render)], "b");
    assert_eq!(pixels(&posed), pixels(&from_render));
    let meta = metadata::read_metadata(&posed).unwrap().unwrap();
    let target = serde_json::to_value(&meta.spec.pose.unwrap().target).unwrap();
    assert_eq!(target["head"]["pose"]["yaw"], -30.0, "{target}");
    assert_eq!(target["head"]["mesh"]["kind"], "builtin", "{target}");
    let again = generate(&["--from", path_str(&posed)], "c");
    assert_eq!(pixels(&again), pixels(&posed));
}

#[test]
fn poses_beyond_the_limits_or_malformed_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    for (json, needle) in [(r#"{"yaw": 75}"#, "yaw 75 is outside -60 … 60"), (r#"{"yaw": "left"}"#, "not a head pose")] {
        let pose_file = dir.path().join("pose.json");
        std::fs::write(&pose_file, json).unwrap();
        let output = arc2face(&["render-pose", path_str(&pose_file), "--out", path_str(&out)]);
        assert!(!output.status.success() && stderr(&output).contains(needle), "{json}: {}", stderr(&output));
    }
    assert!(!out.exists());
}

/// `fit-pose` prints the pose fitted to the chosen face's keypoints, as `--pose` reads it.
#[test]
fn fit_pose_prints_the_fitted_pose_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let models = generation_and_face_models(dir.path());
    let photo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/faces/photos/astronaut.jpg");
    let output = arc2face(&["fit-pose", path_str(&photo), "--models", path_str(&models)]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed: arc2face_studio::pose::HeadPose = serde_json::from_slice(&output.stdout).unwrap();
    // The largest face `faces` lists, fitted here, is the pose printed.
    let faces = arc2face(&["faces", "--models", path_str(&models), path_str(&photo)]);
    let faces: Vec<serde_json::Value> = serde_json::from_slice(&faces.stdout).unwrap();
    let area = |f: &serde_json::Value| {
        (f["bbox"][2].as_f64().unwrap() - f["bbox"][0].as_f64().unwrap())
            * (f["bbox"][3].as_f64().unwrap() - f["bbox"][1].as_f64().unwrap())
    };
    let largest = faces.iter().max_by(|a, b| area(a).total_cmp(&area(b))).unwrap();
    let kps: [[f32; 2]; 5] = serde_json::from_value(largest["kps"].clone()).unwrap();
    let head = arc2face_studio::pose::HeadModel::builtin().unwrap();
    let expected = arc2face_studio::pose::fit_pose(&head, &kps);
    for (name, got, want) in
        [("yaw", printed.yaw, expected.yaw), ("pitch", printed.pitch, expected.pitch), ("roll", printed.roll, expected.roll)]
    {
        assert!((got - want).abs() < 1e-6, "{name}: printed {got}, fitted on the listed keypoints {want}");
    }
    let output = arc2face(&["fit-pose", path_str(&photo), "--models", path_str(&models), "--face", "7"]);
    assert_fails_with(&output, "face 7");
}

/// `--reference` keeps a photo's look: aligned on its largest face (found once when it is also
/// the `--photo`), recorded in the PNG, and asked for again when `--from` restores it.
#[test]
fn a_reference_photo_is_aligned_recorded_and_asked_for_again() {
    let dir = tempfile::tempdir().unwrap();
    let models = generation_and_face_models(dir.path());
    let photo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/faces/photos/astronaut.jpg");
    let run = |extra: &[&str], out: &str| {
        let out = dir.path().join(out);
        let base = [
            "generate",
            "--models",
            path_str(&models),
            "--out",
            path_str(&out),
            "--seed",
            "3",
            "--num-images",
            "1",
            "--steps",
            "2",
            "--size",
            "32",
        ];
        arc2face(&[&base[..], extra].concat())
    };
    let output = run(&["--photo", path_str(&photo), "--reference", path_str(&photo), "--reference-scale", "0.6"], "a");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stderr(&output).matches("face analysis").count(), 1, "the photo is analysed once: {}", stderr(&output));
    let png = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
    let reference = metadata::read_metadata(&png).unwrap().unwrap().spec.reference.expect("the PNG records the reference");
    assert_eq!((reference.photo.as_str(), reference.scale), ("astronaut.jpg", 0.6));
    assert!(reference.face.is_some());

    assert_fails_with(&run(&["--photo", path_str(&photo), "--from", path_str(&png)], "b"), "give it with --reference");
    let again = run(&["--photo", path_str(&photo), "--from", path_str(&png), "--reference", path_str(&photo)], "c");
    assert!(again.status.success(), "{}", stderr(&again));
    let again = PathBuf::from(String::from_utf8(again.stdout).unwrap().trim());
    let pixels = |path: &Path| image::open(path).unwrap().to_rgb8().into_raw();
    assert_eq!(pixels(&again), pixels(&png));
}
