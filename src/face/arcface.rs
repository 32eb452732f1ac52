//! The ArcFace recognizer: an aligned 112×112 RGB crop in, a raw 512-d identity vector out.
//!
//! Input normalisation follows insightface's rule: `(x − 127.5)/127.5`, unless the graph's first
//! nodes already subtract and multiply (names starting `Sub`/`_minus` and `Mul`/`_mul`), in which
//! case the raw 0–255 values go in.

use image::RgbImage;
use ort::session::Session;
use ort::value::Tensor;

use super::FaceError;
use super::align::ALIGNED_SIZE;
use crate::models::onnx::first_node_names;

pub struct ArcFace {
    session: Session,
    input_name: String,
    mean: f32,
    std: f32,
}

impl ArcFace {
    /// `model_bytes` is the ONNX file the session was built from, read for its node names.
    pub fn new(session: Session, model_bytes: &[u8]) -> Result<Self, String> {
        let input = session.inputs().first().ok_or("the recognizer has no input")?;
        let input_name = input.name().to_string();
        let names = first_node_names(model_bytes, 8).map_err(|e| format!("not a readable ONNX model: {e}"))?;
        let subtracts = names.iter().any(|n| n.starts_with("Sub") || n.starts_with("_minus"));
        let multiplies = names.iter().any(|n| n.starts_with("Mul") || n.starts_with("_mul"));
        let (mean, std) = if subtracts && multiplies { (0.0, 1.0) } else { (127.5, 127.5) };
        Ok(Self { session, input_name, mean, std })
    }

    /// The raw (not normalised) embedding of an aligned crop.
    pub fn embed(&mut self, aligned: &RgbImage) -> Result<Vec<f32>, FaceError> {
        let side = ALIGNED_SIZE as usize;
        let plane = side * side;
        let mut blob = vec![0f32; 3 * plane];
        for (x, y, pixel) in aligned.enumerate_pixels() {
            for c in 0..3 {
                blob[c * plane + y as usize * side + x as usize] = (pixel[c] as f32 - self.mean) / self.std;
            }
        }
        let input = Tensor::from_array(([1usize, 3, side, side], blob)).map_err(FaceError::runtime)?;
        let outputs = self.session.run(ort::inputs![self.input_name.as_str() => input]).map_err(FaceError::runtime)?;
        let (_, embedding) = outputs[0].try_extract_tensor::<f32>().map_err(FaceError::runtime)?;
        Ok(embedding.to_vec())
    }
}
