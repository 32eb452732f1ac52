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

/// The names of the first `limit` nodes of an ONNX model's graph, read straight from the
/// protobuf (ModelProto.graph = field 7, GraphProto.node = field 1, NodeProto.name = field 3).
fn first_node_names(model: &[u8], limit: usize) -> Result<Vec<String>, &'static str> {
    let graph = protobuf_fields(model)?
        .into_iter()
        .find(|(field, _)| *field == 7)
        .map(|(_, bytes)| bytes)
        .ok_or("no graph")?;
    let mut names = Vec::new();
    for (field, node) in protobuf_fields(graph)? {
        if names.len() == limit {
            break;
        }
        if field == 1 {
            let name = protobuf_fields(node)?.into_iter().find(|(f, _)| *f == 3).map(|(_, b)| b).unwrap_or_default();
            names.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(names)
}

/// The length-delimited fields of one protobuf message, in order; other wire types are skipped.
fn protobuf_fields(mut bytes: &[u8]) -> Result<Vec<(u64, &[u8])>, &'static str> {
    fn varint(bytes: &mut &[u8]) -> Result<u64, &'static str> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = bytes.split_first().ok_or("truncated")?;
            *bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("bad varint")
    }
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut bytes)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).map_err(|_| "too long")?;
                let value = bytes.get(..len).ok_or("truncated")?;
                fields.push((key >> 3, value));
                len
            }
            _ => return Err("unsupported wire type"),
        };
        bytes = bytes.get(skip..).ok_or("truncated")?;
    }
    Ok(fields)
}
