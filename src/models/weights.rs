//! Weights from safetensors files, read tensor by tensor with positioned reads. Nothing is
//! memory-mapped, so a model's weights are resident once (a map would keep the file's pages
//! counted beside the copies candle makes), and a LoRA's low-rank deltas are merged into each
//! weight in f32 as it is read, before the cast to the model dtype.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use crate::diffusion::lora::LoraDeltas;

/// Where one tensor lies in a safetensors file.
#[derive(Debug, Clone)]
struct TensorInfo {
    dtype: DType,
    shape: Vec<usize>,
    /// Byte range within the file.
    start: u64,
    end: u64,
}

/// An open safetensors file: its header read, its tensors read on demand.
pub struct SafetensorsFile {
    path: PathBuf,
    file: std::sync::Mutex<std::fs::File>,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: HashMap<String, String>,
}

impl SafetensorsFile {
    /// Opens `path` and reads its header; the error says what is wrong with the file (not a
    /// safetensors file, truncated, an unknown dtype).
    pub fn open(path: &Path) -> Result<Self, String> {
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        let mut length = [0u8; 8];
        file.read_exact(&mut length).map_err(|_| "too short for a safetensors file")?;
        let header_len = u64::from_le_bytes(length);
        if header_len > 100 << 20 || 8 + header_len > size {
            return Err(format!("not a safetensors file (header of {header_len} bytes in a file of {size})"));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(|e| e.to_string())?;
        let header: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| format!("unreadable safetensors header: {e}"))?;
        let data_start = 8 + header_len;
        let mut tensors = BTreeMap::new();
        let mut metadata = HashMap::new();
        for (name, info) in header {
            if name == "__metadata__" {
                if let Some(entries) = info.as_object() {
                    metadata = entries.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect();
                }
                continue;
            }
            let bad = || format!("tensor {name:?}: malformed header entry");
            let dtype = match info.get("dtype").and_then(|d| d.as_str()).ok_or_else(bad)? {
                "F32" => DType::F32,
                "F16" => DType::F16,
                "BF16" => DType::BF16,
                "F64" => DType::F64,
                "I64" => DType::I64,
                "U8" => DType::U8,
                "U32" => DType::U32,
                other => return Err(format!("tensor {name:?}: dtype {other} is not supported")),
            };
            let shape: Vec<usize> = info
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(bad)?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<_>>()
                .ok_or_else(bad)?;
            let offsets = info.get("data_offsets").and_then(|o| o.as_array()).ok_or_else(bad)?;
            let (Some(start), Some(end)) = (offsets.first().and_then(|o| o.as_u64()), offsets.get(1).and_then(|o| o.as_u64())) else {
                return Err(bad());
            };
            let bytes = shape.iter().product::<usize>() * dtype.size_in_bytes();
            if end < start || (end - start) as usize != bytes {
                return Err(format!("tensor {name:?}: {} bytes for shape {shape:?} of {dtype:?}", end.saturating_sub(start)));
            }
            tensors.insert(name, TensorInfo { dtype, shape, start: data_start + start, end: data_start + end });
        }
        let data_end = tensors.values().map(|t| t.end).max().unwrap_or(data_start);
        match size.cmp(&data_end) {
            std::cmp::Ordering::Equal => {}
            std::cmp::Ordering::Less => {
                return Err(format!("truncated: {} of {}", super::check::human_bytes(size), super::check::human_bytes(data_end)));
            }
            std::cmp::Ordering::Greater => return Err(format!("{} longer than its tensors", super::check::human_bytes(size - data_end))),
        }
        if tensors.is_empty() {
            return Err("no tensors in the safetensors header".into());
        }
        Ok(Self { path: path.to_path_buf(), file: std::sync::Mutex::new(file), tensors, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensors' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    /// The header's `__metadata__` strings.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// One tensor as stored (its dtype), on the CPU.
    pub fn read(&self, name: &str) -> candle_core::Result<Tensor> {
        let Some(info) = self.tensors.get(name) else {
            candle_core::bail!("{}: no tensor named {name}", self.path.display());
        };
        match info.dtype {
            DType::F32 => self.read_as::<f32>(info),
            DType::F16 => self.read_as::<half::f16>(info),
            DType::BF16 => self.read_as::<half::bf16>(info),
            DType::F64 => self.read_as::<f64>(info),
            DType::I64 => self.read_as::<i64>(info),
            DType::U8 => self.read_as::<u8>(info),
            DType::U32 => self.read_as::<u32>(info),
            other => candle_core::bail!("{}: {name}: dtype {other:?} is not supported", self.path.display()),
        }
    }

    /// Reads a tensor's bytes straight into the buffer the tensor will own (no second copy: for
    /// the UNet that is 3.4 GB of memory traffic saved). Safetensors are little-endian, as are
    /// the machines we build for.
    fn read_as<T: candle_core::WithDType>(&self, info: &TensorInfo) -> candle_core::Result<Tensor> {
        use std::io::{Read, Seek, SeekFrom};
        let mut values = vec![T::zero(); info.shape.iter().product()];
        // SAFETY: T is one of candle's plain numeric types, for which every bit pattern is a
        // valid value; the byte view covers exactly the vector's initialised elements.
        let bytes = unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(values.as_slice())) };
        let mut file = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        file.seek(SeekFrom::Start(info.start))
            .and_then(|_| file.read_exact(bytes))
            .map_err(|e| candle_core::Error::msg(format!("{}: {e}", self.path.display())))?;
        Tensor::from_vec(values, info.shape.as_slice(), &Device::Cpu)
    }

    /// Every tensor, on the CPU as stored (for small files: LoRAs).
    pub fn read_all(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        self.names().map(|name| Ok((name.to_string(), self.read(name)?))).collect()
    }
}

/// A model's weights for candle's `VarBuilder`: read from a safetensors file, each with the
/// LoRA deltas for it (if any) added in f32, then cast to the model dtype and moved to the device.
pub struct Weights {
    file: SafetensorsFile,
    lora: Option<Arc<LoraDeltas>>,
}

impl Weights {
    pub fn new(file: SafetensorsFile, lora: Option<Arc<LoraDeltas>>) -> Self {
        Self { file, lora }
    }

    /// A `VarBuilder` over these weights.
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> candle_nn::VarBuilder<'static> {
        candle_nn::VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.file.read(name)?;
        let tensor = match &self.lora {
            Some(lora) if lora.changes(name) => lora.apply(name, &tensor.to_dtype(DType::F32)?)?,
            _ => tensor,
        };
        tensor.to_dtype(dtype)?.to_device(device)
    }
}

impl SimpleBackend for Weights {
    fn get(&self, shape: Shape, name: &str, _: candle_nn::Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, dtype, device)?;
        if tensor.shape() != &shape {
            candle_core::bail!("{}: {name} has shape {:?}, expected {shape:?}", self.file.path.display(), tensor.dims());
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.file.tensors.contains_key(name)
    }
}
