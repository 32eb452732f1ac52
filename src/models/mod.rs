//! The models folder: where each file lives, and reading config files with errors that name them.
//!
//! The folder mirrors the Hugging Face repositories (DESIGN.md §3), so the same loader reads the
//! real weights and the tiny test fixtures.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

/// Anything wrong with a model file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: missing ({what}); see README.md for getting the models, or pass --models", path.display())]
    Missing { path: PathBuf, what: &'static str },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

impl ModelError {
    pub fn invalid(path: &Path, reason: impl std::fmt::Display) -> Self {
        ModelError::Invalid { path: path.to_path_buf(), reason: first_line(&reason.to_string()) }
    }
}

/// candle appends a backtrace to its messages when `RUST_BACKTRACE` is set; users need only the
/// reason.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().trim().to_string()
}

/// One file of the models folder, relative to its root.
#[derive(Debug, Clone, Copy)]
pub struct ModelFile {
    pub relative_path: &'static str,
    pub what: &'static str,
}

pub const UNET_CONFIG: ModelFile =
    ModelFile { relative_path: "arc2face/config.json", what: "Arc2Face UNet config" };
pub const UNET_WEIGHTS: ModelFile = ModelFile {
    relative_path: "arc2face/diffusion_pytorch_model.safetensors",
    what: "Arc2Face UNet weights",
};
pub const ENCODER_CONFIG: ModelFile =
    ModelFile { relative_path: "encoder/config.json", what: "Arc2Face ID encoder config" };
pub const ENCODER_WEIGHTS: ModelFile = ModelFile {
    relative_path: "encoder/pytorch_model.bin",
    what: "Arc2Face ID encoder weights (torch pickle)",
};
pub const VAE_CONFIG: ModelFile =
    ModelFile { relative_path: "vae/config.json", what: "SD1.5 VAE config" };
pub const VAE_WEIGHTS: ModelFile = ModelFile {
    relative_path: "vae/diffusion_pytorch_model.safetensors",
    what: "SD1.5 VAE weights",
};
pub const SCHEDULER_CONFIG: ModelFile = ModelFile {
    relative_path: "scheduler/scheduler_config.json",
    what: "SD1.5 scheduler config",
};

pub const DETECTOR: ModelFile = ModelFile {
    relative_path: "antelopev2/scrfd_10g_bnkps.onnx",
    what: "SCRFD-10G face detector (insightface antelopev2)",
};
pub const RECOGNIZER: ModelFile =
    ModelFile { relative_path: "arcface.onnx", what: "Arc2Face's ArcFace recognizer (not glintr100.onnx)" };

/// The files a generation needs.
pub const GENERATION_FILES: [ModelFile; 7] = [
    UNET_CONFIG,
    UNET_WEIGHTS,
    ENCODER_CONFIG,
    ENCODER_WEIGHTS,
    VAE_CONFIG,
    VAE_WEIGHTS,
    SCHEDULER_CONFIG,
];

/// A models folder on disk.
#[derive(Debug, Clone)]
pub struct ModelsDir {
    root: PathBuf,
}

impl ModelsDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, file: ModelFile) -> PathBuf {
        self.root.join(file.relative_path)
    }

    /// The path of `file`, or an error naming it when it is not there.
    pub fn existing(&self, file: ModelFile) -> Result<PathBuf, ModelError> {
        let path = self.path(file);
        if path.is_file() {
            Ok(path)
        } else {
            Err(ModelError::Missing { path, what: file.what })
        }
    }

    /// Checks every file a generation needs, so that a user learns of all missing files at once.
    pub fn check_generation_files(&self) -> Result<(), ModelError> {
        if !self.root.is_dir() {
            return Err(ModelError::invalid(&self.root, "models folder not found; pass --models or set ARC2FACE_MODELS"));
        }
        let missing: Vec<ModelFile> =
            GENERATION_FILES.into_iter().filter(|file| !self.path(*file).is_file()).collect();
        match missing.as_slice() {
            [] => Ok(()),
            [one] => Err(ModelError::Missing { path: self.path(*one), what: one.what }),
            many => Err(ModelError::Invalid {
                path: self.root.clone(),
                reason: format!(
                    "missing model files: {}; see README.md for getting the models",
                    many.iter().map(|f| f.relative_path).collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    }

    /// Reads and parses a JSON config file of this folder.
    pub fn read_config<T: DeserializeOwned>(&self, file: ModelFile) -> Result<T, ModelError> {
        let path = self.existing(file)?;
        read_json(&path)
    }
}

/// Reads a JSON file; the error names the file and says what is wrong with it.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::invalid(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::invalid(path, format!("malformed config: {e}")))
}

/// Weights from a safetensors file, memory-mapped, converted to `dtype` on `device` as they are read.
pub fn load_safetensors(path: &Path, dtype: DType, device: &Device) -> candle_core::Result<VarBuilder<'static>> {
    // SAFETY: the file is mapped read-only; like every mmap user we rely on nobody truncating it
    // while the app runs.
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, device) }
}

/// Weights from a torch zip pickle holding a flat state dict.
pub fn load_pickle(path: &Path, dtype: DType, device: &Device) -> candle_core::Result<VarBuilder<'static>> {
    let tensors = candle_core::pickle::read_all(path)?.into_iter().collect();
    Ok(VarBuilder::from_tensors(tensors, dtype, device))
}
