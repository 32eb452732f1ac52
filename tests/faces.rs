//! Face analysis against insightface's own Python code run on the same tiny ONNX models and
//! photos (tests/fixtures/faces, written by tools/make_face_fixtures.py). Needs ONNX Runtime:
//! scripts/test provisions it and sets ORT_DYLIB_PATH.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use arc2face_studio::face::{self, Face, FaceAnalyzer, align, photo::load_photo};
use arc2face_studio::models::ModelsDir;
use candle_core::{Device, Tensor};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct ReferenceFace {
    bbox: [f32; 4],
    score: f32,
    kps: [[f32; 2]; 5],
    embedding: Vec<f32>,
    embedding_d24: Vec<f32>,
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/faces")
}

fn photo(name: &str) -> PathBuf {
    fixture().join("photos").join(name)
}

fn reference(name: &str) -> Vec<ReferenceFace> {
    let path = fixture().join("reference").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn analyze(name: &str, det_size: usize) -> Vec<Face> {
    let mut analyzer = FaceAnalyzer::load(&ModelsDir::new(fixture().join("models"))).unwrap();
    analyzer.analyze(&load_photo(&photo(name)).unwrap(), det_size).unwrap()
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    w * h / (area(a) + area(b) - w * h)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// insightface's faces with score ≥ 0.6 are all found (IoU ≥ 0.9) with scores within 0.01,
/// keypoints within 1.5 px and embeddings at cosine ≥ 0.99; we find no extra confident face.
fn assert_matches(ours: &[Face], theirs: &[ReferenceFace], what: &str) {
    for reference in theirs.iter().filter(|f| f.score >= 0.6) {
        let found = ours.iter().max_by(|a, b| iou(&a.bbox, &reference.bbox).total_cmp(&iou(&b.bbox, &reference.bbox)));
        let face = found.unwrap_or_else(|| panic!("{what}: found nothing"));
        let overlap = iou(&face.bbox, &reference.bbox);
        assert!(overlap >= 0.9, "{what}: face at {:?} missed (best IoU {overlap})", reference.bbox);
        assert!((face.score - reference.score).abs() <= 0.01, "{what}: score {} vs {}", face.score, reference.score);
        let kps_error = face.kps.iter().flatten().zip(reference.kps.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(kps_error <= 1.5, "{what}: keypoints off by {kps_error} px");
        let similarity = cosine(&face.embedding, &reference.embedding);
        assert!(similarity >= 0.99, "{what}: embedding cosine {similarity}");
    }
    for face in ours.iter().filter(|f| f.score >= 0.6) {
        let matched = theirs.iter().any(|r| iou(&face.bbox, &r.bbox) >= 0.9);
        assert!(matched, "{what}: extra face {:?} with score {}", face.bbox, face.score);
    }
}

#[test]
fn faces_match_insightface_on_every_photo() {
    for name in ["astronaut", "two_faces", "large", "rotated"] {
        let ours = analyze(&format!("{name}.jpg"), face::DEFAULT_DET_SIZE);
        let theirs = reference(&format!("{name}.json"));
        assert_matches(&ours, &theirs, name);
        assert_eq!(ours.len(), theirs.len(), "{name}: same number of faces above 0.5");
    }
}

#[test]
fn a_photo_without_a_face_gives_none() {
    assert!(analyze("no_face.png", face::DEFAULT_DET_SIZE).is_empty());
}

#[test]
fn a_tight_crop_is_found_by_retrying_smaller_detector_sizes() {
    assert!(reference("tight_crop.json").is_empty(), "insightface finds nothing at 640");
    let ours = analyze("tight_crop.jpg", face::DEFAULT_DET_SIZE);
    assert_matches(&ours, &reference("tight_crop_det320.json"), "tight crop");
    assert_eq!(ours.len(), 1);
}

#[test]
fn alignment_matches_insightface_norm_crop() {
    let kps = reference("astronaut.json")[0].kps;
    let matrix = align::similarity_transform(&kps, &align::ARCFACE_TEMPLATE);
    let expected: Vec<f64> =
        Tensor::read_npy(fixture().join("reference/align_matrix_astronaut_0.npy")).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    for (ours, theirs) in matrix.iter().flatten().zip(&expected) {
        assert!((ours - theirs).abs() <= 1e-6 * theirs.abs().max(1.0), "matrix {matrix:?} vs {expected:?}");
    }
    let crop = align::arcface_crop(&load_photo(&photo("astronaut.jpg")).unwrap(), &kps);
    // insightface's crop is BGR.
    let bgr: Vec<u8> =
        Tensor::read_npy(fixture().join("reference/aligned_astronaut_0.npy")).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let diffs: Vec<u8> = crop.pixels().zip(bgr.chunks(3)).flat_map(|(p, q)| (0..3).map(move |c| p[c].abs_diff(q[2 - c]))).collect();
    let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
    // OpenCV quantises sampling positions to 1/32 px and weights to 15 bits; we do not.
    assert!(mean < 0.5 && diffs.iter().all(|&d| d <= 3), "mean {mean}, max {:?}", diffs.iter().max());
}

#[test]
fn the_identity_of_several_photos_is_the_normalised_mean() {
    let (a, b) = (vec![3.0, 4.0], vec![0.0, 2.0]);
    let mean = face::mean_identity(&[a, b]);
    // (0.6, 0.8) + (0, 1) = (0.6, 1.8), normalised.
    let norm = (0.6f32 * 0.6 + 1.8 * 1.8).sqrt();
    assert!((mean[0] - 0.6 / norm).abs() < 1e-6 && (mean[1] - 1.8 / norm).abs() < 1e-6, "{mean:?}");
}

fn arc2face(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_arc2face")).args(args).output().unwrap()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn faces_cli_prints_every_face_as_json() {
    let models = fixture().join("models");
    let output = arc2face(&["faces", "--models", path_str(&models), path_str(&photo("two_faces.jpg"))]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    #[derive(Deserialize)]
    struct Printed {
        bbox: [f32; 4],
        score: f32,
        kps: [[f32; 2]; 5],
        embedding: Vec<f32>,
    }
    let printed: Vec<Printed> = serde_json::from_slice(&output.stdout).unwrap();
    let faces: Vec<Face> = printed.into_iter().map(|p| Face { bbox: p.bbox, score: p.score, kps: p.kps, embedding: p.embedding }).collect();
    assert_matches(&faces, &reference("two_faces.json"), "faces CLI");
    assert!(faces.windows(2).all(|w| w[0].score >= w[1].score), "detection order: score descending");

    let output = arc2face(&["faces", "--models", path_str(&models), path_str(&photo("no_face.png"))]);
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "[]");
}

#[test]
fn generate_from_a_photo_uses_insightfaces_embedding_of_the_largest_face() {
    let dir = tempfile::tempdir().unwrap();
    let models = common::generation_and_face_models(dir.path());
    let noise = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/reference/gen_noise.npy");
    let generate = |identity: &[&str], name: &str| -> Tensor {
        let latents = dir.path().join(format!("{name}.npy"));
        let out = dir.path().join(name);
        let mut args = vec!["generate", "--models", path_str(&models), "--noise", path_str(&noise), "--steps", "5"];
        args.extend_from_slice(identity);
        args.extend_from_slice(&["--out", path_str(&out), "--latents-out", path_str(&latents)]);
        let output = arc2face(&args);
        assert!(output.status.success(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
        Tensor::read_npy(&latents).unwrap()
    };

    let theirs = reference("astronaut.json");
    let largest = (0..theirs.len())
        .max_by(|&a, &b| {
            let area = |f: &ReferenceFace| (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]);
            area(&theirs[a]).total_cmp(&area(&theirs[b]))
        })
        .unwrap();
    let embedding = dir.path().join("insightface.npy");
    Tensor::new(theirs[largest].embedding_d24.as_slice(), &Device::Cpu).unwrap().write_npy(&embedding).unwrap();

    let from_photo = generate(&["--photo", path_str(&photo("astronaut.jpg"))], "photo");
    let from_insightface = generate(&["--embedding", path_str(&embedding)], "insightface");
    let scale = from_insightface.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let error = (&from_photo - &from_insightface).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale;
    assert!(error <= 1e-3, "photo vs insightface's embedding: relative max error {error:.3e}");

    let other_face = if largest == 0 { "1" } else { "0" };
    let from_other = generate(&["--photo", path_str(&photo("astronaut.jpg")), "--face", other_face], "other");
    let difference = (&from_other - &from_photo).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale;
    assert!(difference > 1e-2, "--face picks another identity");

    let output = arc2face(&["generate", "--models", path_str(&models), "--photo", path_str(&photo("no_face.png"))]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("no face found"), "{stderr}");
}

/// FFHQ's crop puts a frontal face where FFHQ's portraits have it: the eyes near x = 192 and 320
/// at y ≈ 242, the mouth near y ≈ 378 in a 512 crop; outside the photo the edge repeats.
#[test]
fn the_ffhq_crop_frames_a_face_as_ffhq_does() {
    // Eyes 64 px apart at y 100, mouth corners 68 px below: half side max(2·64, 1.8·68) = 128.
    let keypoints = [[100.0, 100.0], [164.0, 100.0], [132.0, 135.0], [108.0, 168.0], [156.0, 168.0]];
    let mut photo = image::RgbImage::from_pixel(300, 300, image::Rgb([40, 40, 40]));
    let dot = |photo: &mut image::RgbImage, [x, y]: [f32; 2], colour: [u8; 3]| {
        for (dx, dy) in (0..2).flat_map(|dx| (0..2).map(move |dy| (dx, dy))) {
            photo.put_pixel(x as u32 - 1 + dx, y as u32 - 1 + dy, image::Rgb(colour));
        }
    };
    dot(&mut photo, keypoints[0], [255, 0, 0]);
    dot(&mut photo, keypoints[4], [0, 255, 0]);
    let crop = align::ffhq_crop(&photo, &keypoints, 512).unwrap();
    // The weighted centre of each dot's channel in the crop.
    let centre = |channel: usize| {
        let (mut sum, mut sx, mut sy) = (0.0, 0.0, 0.0);
        for (x, y, p) in crop.enumerate_pixels() {
            let w = (p[channel] as f64 - 40.0).max(0.0);
            (sum, sx, sy) = (sum + w, sx + w * (x as f64 + 0.5), sy + w * (y as f64 + 0.5));
        }
        [sx / sum, sy / sum]
    };
    let [ex, ey] = centre(0);
    assert!((ex - 192.0).abs() < 1.0 && (ey - 242.4).abs() < 1.0, "left eye at ({ex}, {ey})");
    let [mx, my] = centre(1);
    assert!((mx - 304.0).abs() < 1.0 && (my - 378.4).abs() < 1.0, "right mouth corner at ({mx}, {my})");
    // The square reaches past the photo's left edge: repeated edge pixels, no black.
    assert!(crop.pixels().all(|p| p.0.iter().any(|&c| c >= 40)), "no black border");
    assert!(align::ffhq_crop(&photo, &[[5.0, 5.0]; 5], 512).is_none(), "degenerate keypoints");
}
