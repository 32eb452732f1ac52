//! Where a generation runs and in which precision: one policy for the CLI and the GUI.
//!
//! `Auto` picks CUDA (device 0) when this build has it and a GPU answers, else the CPU; and f16
//! on CUDA, f32 on the CPU. Every other combination either works or is refused here, up front,
//! with a message that says what to choose instead.

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::EngineError;

/// The device a user asks for; written as `auto`, `cpu` or `cuda:N`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

/// The model precision a user asks for. Latents and sampler arithmetic stay f32 regardless.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

/// The requested device and precision, as a job records them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeSpec {
    pub device: DeviceChoice,
    pub precision: Precision,
}

/// A resolved runtime: the candle device and model dtype a pipeline is built for.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub device: Device,
    pub dtype: DType,
}

impl Runtime {
    /// For people: "CPU, f32", "CUDA 0, f16".
    pub fn describe(&self) -> String {
        let device = match &self.device {
            Device::Cpu => "CPU".to_string(),
            Device::Cuda(_) => format!("CUDA {}", self.ordinal()),
            Device::Metal(_) => "Metal".to_string(),
        };
        format!("{device}, {}", dtype_name(self.dtype))
    }

    fn ordinal(&self) -> usize {
        match self.device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
            _ => 0,
        }
    }

    /// Whether two runtimes build the same pipeline.
    pub fn same_as(&self, other: &Runtime) -> bool {
        self.device.same_device(&other.device) && self.dtype == other.dtype
    }
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}

impl DeviceChoice {
    /// `auto`, `cpu`, `cuda` (device 0) or `cuda:N`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!("unknown device {other:?}: use auto, cpu, cuda or cuda:N")),
            },
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        DeviceChoice::parse(&text)
    }
}

impl From<DeviceChoice> for String {
    fn from(choice: DeviceChoice) -> String {
        choice.to_string()
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this binary was built with CUDA support.
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

impl RuntimeSpec {
    /// The device and dtype to build a pipeline with, or why this combination cannot run here.
    pub fn resolve(&self) -> Result<Runtime, EngineError> {
        let device = match self.device {
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Auto => Device::new_cuda(0).unwrap_or(Device::Cpu),
            DeviceChoice::Cuda(ordinal) => cuda(ordinal)?,
        };
        let dtype = match (self.precision, &device) {
            (Precision::Auto, Device::Cpu) | (Precision::F32, _) => DType::F32,
            (Precision::Auto, _) | (Precision::F16, _) => DType::F16,
            // candle's CPU convolutions have no bf16 kernels: refuse before loading anything.
            (Precision::Bf16, Device::Cpu) => {
                return Err(EngineError::Unsupported(
                    "bf16 does not run on the CPU (its convolutions have no bf16 kernels there): use f32, or f16 to halve memory".into(),
                ));
            }
            (Precision::Bf16, _) => DType::BF16,
        };
        if device.is_cuda() {
            // When a CUDA job runs in f32 (f16 is the default there), its matrix products use
            // TF32 tensor cores (10-bit mantissa inputs, f32 sums): what PyTorch does for
            // convolutions by default, and several times faster on Ampere and later. The
            // sampler's arithmetic (elementwise, f64 coefficients) is not affected.
            candle_core::cuda::set_gemm_reduced_precision_f32(true);
        }
        Ok(Runtime { device, dtype })
    }
}

fn cuda(ordinal: usize) -> Result<Device, EngineError> {
    if !CUDA_BUILD {
        return Err(EngineError::Unsupported(
            "this build has no CUDA support: use the CPU, or the CUDA build of arc2face (scripts/build-cuda)".into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        EngineError::Unsupported(format!("CUDA device {ordinal} is not usable: {}", crate::models::first_line(&e.to_string())))
    })
}

/// Sizes the pool of CPU threads the models compute on (rayon's global pool, shared by candle's
/// CPU ops and our kernels) and returns its size: `requested`, else `RAYON_NUM_THREADS`, else the
/// physical cores. A core's second hardware thread shares its vector units, so in matrix
/// products it adds contention, not speed. Only the first call in a process sizes the pool.
pub fn set_cpu_threads(requested: Option<usize>) -> usize {
    let from_env = std::env::var("RAYON_NUM_THREADS").ok().and_then(|n| n.parse().ok()).filter(|&n| n > 0);
    let threads = requested.or(from_env).unwrap_or_else(num_cpus::get_physical);
    // Fails only when the pool already exists (a second call); it keeps its size then.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    rayon::current_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_f32_on_the_cpu_and_bf16_there_is_refused_up_front() {
        let cpu = RuntimeSpec { device: DeviceChoice::Cpu, precision: Precision::Auto }.resolve().unwrap();
        assert_eq!(cpu.dtype, DType::F32);
        let bf16 = RuntimeSpec { device: DeviceChoice::Cpu, precision: Precision::Bf16 }.resolve();
        assert!(matches!(bf16, Err(EngineError::Unsupported(m)) if m.contains("use f32")));
        assert_eq!(DeviceChoice::parse("cuda:1"), Ok(DeviceChoice::Cuda(1)));
        assert!(DeviceChoice::parse("gpu").is_err());
    }
}
