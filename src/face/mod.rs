//! Face analysis with ONNX Runtime, reproducing insightface as Arc2Face uses it (RECIPE.md, "Face analysis"):
//! SCRFD finds every face with five keypoints; each face is aligned to the ArcFace template and
//! embedded by Arc2Face's own `arcface.onnx`.

pub mod align;
pub mod arcface;
pub mod photo;
pub mod resize;
pub mod runtime;
pub mod scrfd;

use std::path::Path;

use image::RgbImage;
use ort::session::Session;
use serde::Serialize;

use crate::models::{self, ModelError, ModelsDir};
use arcface::ArcFace;
use scrfd::Scrfd;

/// The detector's default square input size.
pub const DEFAULT_DET_SIZE: usize = 640;
/// Tried in turn when nothing is found at the requested size: faces filling the photo are
/// often missed at 640.
const RETRY_DET_SIZES: [usize; 2] = [320, 160];

#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    #[error(transparent)]
    File(#[from] ModelError),
    #[error("{0}")]
    Runtime(String),
    #[error("face model: {0}")]
    Model(String),
}

impl FaceError {
    fn runtime(error: impl std::fmt::Display) -> Self {
        FaceError::Runtime(format!("ONNX Runtime: {error}"))
    }
}

/// A face of a photo: where it is, how sure the detector is, and its identity vector.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Face {
    /// x1, y1, x2, y2 in the photo's pixels.
    pub bbox: [f32; 4],
    pub score: f32,
    pub kps: [[f32; 2]; 5],
    /// Raw ArcFace output; normalised only when it becomes an identity.
    pub embedding: Vec<f32>,
}

impl Face {
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1])
    }
}

/// The index of the largest face, the one picked when the user does not choose.
pub fn largest_face(faces: &[Face]) -> Option<usize> {
    (0..faces.len()).max_by(|&a, &b| faces[a].area().total_cmp(&faces[b].area()))
}

/// One identity from several photos of a person: the normalised mean of their normalised
/// embeddings.
pub fn mean_identity(embeddings: &[Vec<f32>]) -> Vec<f32> {
    let dim = embeddings.first().map_or(0, Vec::len);
    let mut sum = vec![0f32; dim];
    for embedding in embeddings {
        let norm = crate::l2_norm(embedding).max(f32::MIN_POSITIVE);
        sum.iter_mut().zip(embedding).for_each(|(s, v)| *s += v / norm);
    }
    let norm = crate::l2_norm(&sum).max(f32::MIN_POSITIVE);
    sum.iter().map(|v| v / norm).collect()
}

/// A `side`×`side` picture of `face`: the square around its box with some margin, clamped to
/// the photo.
pub fn crop(photo: &RgbImage, face: &Face, side: u32) -> RgbImage {
    let [x1, y1, x2, y2] = face.bbox;
    let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
    let half = ((x2 - x1).max(y2 - y1) * 0.65).max(1.0);
    let (width, height) = (photo.width() as f32, photo.height() as f32);
    let left = (cx - half).clamp(0.0, width - 1.0) as u32;
    let top = (cy - half).clamp(0.0, height - 1.0) as u32;
    let right = ((cx + half).clamp(0.0, width) as u32).max(left + 1);
    let bottom = ((cy + half).clamp(0.0, height) as u32).max(top + 1);
    let square = image::imageops::crop_imm(photo, left, top, right - left, bottom - top).to_image();
    image::imageops::resize(&square, side, side, image::imageops::FilterType::Triangle)
}

/// The length of the identity vectors the models folder's recognizer gives, read from its ONNX
/// graph without loading it; `None` when there is no readable recognizer.
pub fn recognizer_output_len(models: &ModelsDir) -> Option<usize> {
    let bytes = std::fs::read(models.existing(models::RECOGNIZER).ok()?).ok()?;
    let (_, outputs) = crate::models::onnx::graph_signature(&bytes).ok()?;
    let dims = &outputs.first()?.dims;
    Some((*dims.last()?)? as usize)
}

/// The detector and the recognizer, loaded.
pub struct FaceAnalyzer {
    detector: Scrfd,
    recognizer: ArcFace,
}

impl FaceAnalyzer {
    /// Loads both models from `models` on the process's ONNX Runtime.
    pub fn load(models: &ModelsDir) -> Result<Self, FaceError> {
        let detector_path = models.existing(models::DETECTOR)?;
        let recognizer_path = models.existing(models::RECOGNIZER)?;
        let runtime = runtime::runtime().map_err(FaceError::Runtime)?;
        let detector_bytes = read(&detector_path)?;
        let detector = session(&runtime.environment, &detector_bytes, &detector_path)
            .and_then(|s| Scrfd::new(s).map_err(|e| ModelError::invalid(&detector_path, e)))?;
        let recognizer_bytes = read(&recognizer_path)?;
        let recognizer = session(&runtime.environment, &recognizer_bytes, &recognizer_path)
            .and_then(|s| ArcFace::new(s, &recognizer_bytes).map_err(|e| ModelError::invalid(&recognizer_path, e)))?;
        Ok(Self { detector, recognizer })
    }

    /// Every face in `photo`, best detection first, each with its embedding. When none is found
    /// at `det_size`, smaller detector sizes are tried before giving up.
    pub fn analyze(&mut self, photo: &RgbImage, det_size: usize) -> Result<Vec<Face>, FaceError> {
        let sizes = std::iter::once(det_size).chain(RETRY_DET_SIZES.into_iter().filter(|&s| s < det_size));
        for size in sizes {
            let detections = self.detector.detect(photo, size)?;
            if !detections.is_empty() {
                return detections
                    .into_iter()
                    .map(|d| {
                        let aligned = align::arcface_crop(photo, &d.kps);
                        Ok(Face { embedding: self.recognizer.embed(&aligned)?, bbox: d.bbox, score: d.score, kps: d.kps })
                    })
                    .collect();
            }
        }
        Ok(Vec::new())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|e| ModelError::invalid(path, e))
}

fn session(environment: &ort::environment::Environment, bytes: &[u8], path: &Path) -> Result<Session, ModelError> {
    Session::builder(environment)
        .and_then(|mut builder| builder.commit_from_memory(bytes))
        .map_err(|e| ModelError::invalid(path, format!("not a usable ONNX model: {e}")))
}

/// How well a generated image keeps the identity: the cosine between `identity` and the
/// largest face found in `image`, or `None` when no face is found. The image is padded first:
/// generated portraits fill the frame, and the detector misses faces that touch the border.
pub fn identity_match(analyzer: &mut FaceAnalyzer, image: &RgbImage, identity: &[f32]) -> Option<f32> {
    let pad = image.width().max(image.height()) / 4;
    let mut padded = RgbImage::new(image.width() + 2 * pad, image.height() + 2 * pad);
    image::imageops::replace(&mut padded, image, pad as i64, pad as i64);
    let faces = analyzer.analyze(&padded, DEFAULT_DET_SIZE).ok()?;
    let face = &faces[largest_face(&faces)?];
    let dot: f32 = face.embedding.iter().zip(identity).map(|(a, b)| a * b).sum();
    (face.embedding.len() == identity.len()).then(|| dot / (crate::l2_norm(&face.embedding) * crate::l2_norm(identity)))
}
