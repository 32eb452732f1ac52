//! SCRFD face detection as insightface runs it (RECIPE.md, "Face analysis"): letterbox into a square at the
//! top-left, `(x − 127.5)/128`, then per stride (8, 16, 32) decode scores, box distances and
//! keypoint distances around two anchors per cell; keep scores ≥ 0.5; greedy NMS at IoU 0.4.

use image::RgbImage;
use ort::session::Session;
use ort::value::{Tensor, ValueType};

use super::FaceError;

pub const SCORE_THRESHOLD: f32 = 0.5;
pub const NMS_THRESHOLD: f32 = 0.4;
const STRIDES: [usize; 3] = [8, 16, 32];
const ANCHORS_PER_CELL: usize = 2;

/// One detected face, in the photo's pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// x1, y1, x2, y2.
    pub bbox: [f32; 4],
    pub score: f32,
    /// Left eye, right eye, nose, left and right mouth corners.
    pub kps: [[f32; 2]; 5],
}

impl Detection {
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1])
    }
}

pub struct Scrfd {
    session: Session,
    input_name: String,
    /// Set when the model only takes one input size.
    fixed_size: Option<(usize, usize)>,
}

impl Scrfd {
    pub fn new(session: Session) -> Result<Self, String> {
        let input = session.inputs().first().ok_or("the detector has no input")?;
        if session.outputs().len() != 9 {
            return Err(format!(
                "expected an SCRFD detector with 9 outputs (scores, boxes and keypoints for 3 strides), found {}",
                session.outputs().len()
            ));
        }
        let fixed_size = match input.dtype() {
            ValueType::Tensor { shape, .. } if shape.len() == 4 && shape[2] > 0 && shape[3] > 0 => {
                Some((shape[3] as usize, shape[2] as usize))
            }
            ValueType::Tensor { shape, .. } if shape.len() == 4 => None,
            other => return Err(format!("unexpected detector input {other:?}")),
        };
        Ok(Self { input_name: input.name().to_string(), session, fixed_size })
    }

    /// Every face in `photo`, best score first, letterboxing the photo into `det_size`² (or the
    /// model's fixed size).
    pub fn detect(&mut self, photo: &RgbImage, det_size: usize) -> Result<Vec<Detection>, FaceError> {
        let (input_w, input_h) = self.fixed_size.unwrap_or((det_size, det_size));
        let (blob, det_scale) = letterbox_blob(photo, input_w, input_h);
        let input = Tensor::from_array(([1usize, 3, input_h, input_w], blob)).map_err(FaceError::runtime)?;
        let outputs = self.session.run(ort::inputs![self.input_name.as_str() => input]).map_err(FaceError::runtime)?;
        let mut heads = Vec::with_capacity(9);
        for (_, value) in outputs.iter() {
            let (_, data) = value.try_extract_tensor::<f32>().map_err(FaceError::runtime)?;
            heads.push(data.to_vec());
        }
        let mut candidates = Vec::new();
        for (level, &stride) in STRIDES.iter().enumerate() {
            let (scores, boxes, kps) = (&heads[level], &heads[level + 3], &heads[level + 6]);
            let (rows, cols) = (input_h / stride, input_w / stride);
            let anchors = rows * cols * ANCHORS_PER_CELL;
            // Read the sizes the model returned, never the declared ones (RECIPE.md, "Face analysis").
            if scores.len() != anchors || boxes.len() != anchors * 4 || kps.len() != anchors * 10 {
                return Err(FaceError::Model(format!(
                    "stride {stride}: expected {anchors} anchors, the detector returned {} scores",
                    scores.len()
                )));
            }
            for (i, &score) in scores.iter().enumerate() {
                if score < SCORE_THRESHOLD {
                    continue;
                }
                let cell = i / ANCHORS_PER_CELL;
                let (cx, cy) = (((cell % cols) * stride) as f32, ((cell / cols) * stride) as f32);
                let d = |k: usize| boxes[i * 4 + k] * stride as f32;
                let bbox = [cx - d(0), cy - d(1), cx + d(2), cy + d(3)].map(|v| v / det_scale);
                let kp = |k: usize| {
                    let (dx, dy) = (kps[i * 10 + 2 * k], kps[i * 10 + 2 * k + 1]);
                    [(cx + dx * stride as f32) / det_scale, (cy + dy * stride as f32) / det_scale]
                };
                candidates.push(Detection { bbox, score, kps: [kp(0), kp(1), kp(2), kp(3), kp(4)] });
            }
        }
        candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(non_maximum_suppression(candidates, NMS_THRESHOLD))
    }
}

/// Resizes `photo` to fit `width`×`height` keeping its aspect ratio (as insightface rounds it),
/// places it at the top-left of a zero canvas and normalises to `(x − 127.5)/128`, NCHW.
/// Returns the blob and the scale from photo to canvas pixels.
fn letterbox_blob(photo: &RgbImage, width: usize, height: usize) -> (Vec<f32>, f32) {
    let (w, h) = (photo.width() as usize, photo.height() as usize);
    let image_ratio = h as f64 / w as f64;
    let model_ratio = height as f64 / width as f64;
    let (new_w, new_h) = if image_ratio > model_ratio {
        (((height as f64 / image_ratio) as usize).max(1), height)
    } else {
        (width, ((width as f64 * image_ratio) as usize).max(1))
    };
    let det_scale = new_h as f32 / h as f32;
    let resized = super::resize::bilinear(photo, new_w, new_h);
    let plane = width * height;
    let mut blob = vec![-127.5f32 / 128.0; 3 * plane];
    for (x, y, pixel) in resized.enumerate_pixels() {
        for c in 0..3 {
            blob[c * plane + y as usize * width + x as usize] = (pixel[c] as f32 - 127.5) / 128.0;
        }
    }
    (blob, det_scale)
}

/// Greedy NMS over detections sorted by score, with insightface's +1 pixel area convention.
fn non_maximum_suppression(sorted: Vec<Detection>, threshold: f32) -> Vec<Detection> {
    let area = |b: &[f32; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let mut kept: Vec<Detection> = Vec::new();
    for candidate in sorted {
        let overlaps = kept.iter().any(|k| {
            let (a, b) = (&k.bbox, &candidate.bbox);
            let w = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
            let h = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
            let intersection = w * h;
            intersection / (area(a) + area(b) - intersection) > threshold
        });
        if !overlaps {
            kept.push(candidate);
        }
    }
    kept
}
