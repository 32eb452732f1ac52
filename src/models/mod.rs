//! The models folder: where each file lives, and reading config files with errors that name them.
//!
//! The folder mirrors the Hugging Face repositories (RECIPE.md, "Models folder"), so the same loader reads the
//! real weights and the tiny test fixtures.

pub mod check;
pub mod download;
pub mod hub;
pub mod onnx;
pub mod onnxruntime;
pub mod weights;

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
pub fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().trim().to_string()
}

/// One file of the models folder, relative to its root, and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFile {
    pub relative_path: &'static str,
    pub what: &'static str,
    pub source: HubFile,
    pub licence: &'static str,
    pub needed_for: Feature,
    /// About how large the real file is (0 for small or unknown), to say how much a download
    /// will take before the hub says exactly.
    pub typical_bytes: u64,
}

impl ModelFile {
    const fn sized(self, typical_bytes: u64) -> Self {
        ModelFile { typical_bytes, ..self }
    }
}

/// A file of a Hugging Face Hub repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubFile {
    pub repo: &'static str,
    pub kind: RepoKind,
    pub path: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Space,
}

/// What a file is needed for: the app works without the files of a feature it does not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    Generation,
    FaceAnalysis,
    PoseControl,
    ExpressionControl,
    FastMode,
    KeepingTheLook,
}

impl Feature {
    pub fn label(self) -> &'static str {
        match self {
            Feature::Generation => "generation",
            Feature::FaceAnalysis => "face analysis",
            Feature::PoseControl => "pose control",
            Feature::ExpressionControl => "expression control",
            Feature::FastMode => "fast mode",
            Feature::KeepingTheLook => "keeping the photo's look",
        }
    }

    /// Whether the app cannot generate from a photo without it.
    pub fn required(self) -> bool {
        matches!(self, Feature::Generation | Feature::FaceAnalysis)
    }
}

const ARC2FACE_REPO: &str = "FoivosPar/Arc2Face";
const SD15_REPO: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";
const MIT: &str = "MIT (Arc2Face)";
const OPENRAIL: &str = "CreativeML OpenRAIL-M (Stable Diffusion 1.5)";
const INSIGHTFACE: &str = "non-commercial research only (insightface models)";
const EMOCA: &str = "non-commercial (trained on EMOCA/FLAME outputs)";

const fn arc2face_file(relative_path: &'static str, what: &'static str, needed_for: Feature, licence: &'static str) -> ModelFile {
    let source = HubFile { repo: ARC2FACE_REPO, kind: RepoKind::Model, path: relative_path };
    ModelFile { relative_path, what, source, licence, needed_for, typical_bytes: 0 }
}

const fn sd15_file(relative_path: &'static str, what: &'static str) -> ModelFile {
    let source = HubFile { repo: SD15_REPO, kind: RepoKind::Model, path: relative_path };
    ModelFile { relative_path, what, source, licence: OPENRAIL, needed_for: Feature::Generation, typical_bytes: 0 }
}

pub const UNET_CONFIG: ModelFile = arc2face_file("arc2face/config.json", "Arc2Face UNet config", Feature::Generation, MIT);
pub const UNET_WEIGHTS: ModelFile =
    arc2face_file("arc2face/diffusion_pytorch_model.safetensors", "Arc2Face UNet weights", Feature::Generation, MIT).sized(3_440_000_000);
pub const ENCODER_CONFIG: ModelFile = arc2face_file("encoder/config.json", "Arc2Face ID encoder config", Feature::Generation, MIT);
pub const ENCODER_WEIGHTS: ModelFile =
    arc2face_file("encoder/pytorch_model.bin", "Arc2Face ID encoder weights (torch pickle)", Feature::Generation, MIT).sized(492_000_000);
pub const VAE_CONFIG: ModelFile = sd15_file("vae/config.json", "SD1.5 VAE config");
pub const VAE_WEIGHTS: ModelFile = sd15_file("vae/diffusion_pytorch_model.safetensors", "SD1.5 VAE weights").sized(335_000_000);
pub const SCHEDULER_CONFIG: ModelFile = sd15_file("scheduler/scheduler_config.json", "SD1.5 scheduler config");

pub const DETECTOR: ModelFile = ModelFile {
    relative_path: "antelopev2/scrfd_10g_bnkps.onnx",
    what: "SCRFD-10G face detector (insightface antelopev2)",
    // insightface's own download is a zip on GitHub; the Arc2Face Space mirrors the file on the hub.
    source: HubFile { repo: ARC2FACE_REPO, kind: RepoKind::Space, path: "models/antelopev2/scrfd_10g_bnkps.onnx" },
    licence: INSIGHTFACE,
    needed_for: Feature::FaceAnalysis,
    typical_bytes: 16_900_000,
};
pub const RECOGNIZER: ModelFile =
    arc2face_file("arcface.onnx", "Arc2Face's ArcFace recognizer (not glintr100.onnx)", Feature::FaceAnalysis, INSIGHTFACE)
        .sized(261_000_000);

pub const CONTROLNET_CONFIG: ModelFile =
    arc2face_file("controlnet/config.json", "Arc2Face pose ControlNet config", Feature::PoseControl, MIT);
pub const CONTROLNET_WEIGHTS: ModelFile =
    arc2face_file("controlnet/diffusion_pytorch_model.safetensors", "Arc2Face pose ControlNet weights", Feature::PoseControl, MIT)
        .sized(1_450_000_000);
pub const EXPRESSION_ADAPTER: ModelFile =
    arc2face_file("exp_adapter/exp_adapter.bin", "Arc2Face Expression Adapter (torch pickle)", Feature::ExpressionControl, EMOCA);

pub const REFERENCE_ADAPTER: ModelFile = arc2face_file(
    "ref_adapter/pytorch_lora_weights.safetensors",
    "Arc2Face Reference Adapter LoRA (keep the photo's look)",
    Feature::KeepingTheLook,
    MIT,
);

pub const LCM_LORA: ModelFile = ModelFile {
    relative_path: "lcm_lora/pytorch_lora_weights.safetensors",
    what: "LCM-LoRA: 2 to 8 steps instead of 25 (fast mode)",
    source: HubFile { repo: "latent-consistency/lcm-lora-sdv1-5", kind: RepoKind::Model, path: "pytorch_lora_weights.safetensors" },
    licence: "CreativeML OpenRAIL++-M (LCM-LoRA)",
    needed_for: Feature::FastMode,
    typical_bytes: 135_000_000,
};

/// Where a FLAME model file may be in the models folder, in order of preference (FLAME 2023 Open,
/// then FLAME 2020). FLAME needs a registration to download, so the app never fetches it; the
/// user puts the file there and pose renders use it instead of the built-in head.
pub const FLAME_MODEL_PATHS: [&str; 2] = ["flame/flame2023.pkl", "flame/generic_model.pkl"];

/// The files a generation needs.
pub const GENERATION_FILES: [ModelFile; 7] =
    [UNET_CONFIG, UNET_WEIGHTS, ENCODER_CONFIG, ENCODER_WEIGHTS, VAE_CONFIG, VAE_WEIGHTS, SCHEDULER_CONFIG];

/// Every file of the models folder (RECIPE.md, "Models folder"), in the order the model manager lists them.
pub const ALL_FILES: [ModelFile; 14] = [
    UNET_CONFIG,
    UNET_WEIGHTS,
    ENCODER_CONFIG,
    ENCODER_WEIGHTS,
    VAE_CONFIG,
    VAE_WEIGHTS,
    SCHEDULER_CONFIG,
    DETECTOR,
    RECOGNIZER,
    CONTROLNET_CONFIG,
    CONTROLNET_WEIGHTS,
    EXPRESSION_ADAPTER,
    REFERENCE_ADAPTER,
    LCM_LORA,
];

/// The models folder when none is configured: `ARC2FACE_MODELS`, else the data folder's `models`.
pub fn default_models_dir() -> PathBuf {
    std::env::var_os("ARC2FACE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("models"))
}

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
        if path.is_file() { Ok(path) } else { Err(ModelError::Missing { path, what: file.what }) }
    }

    /// The FLAME model file the folder has, if any ([`FLAME_MODEL_PATHS`]), relative to it.
    pub fn flame_model(&self) -> Option<&'static str> {
        FLAME_MODEL_PATHS.into_iter().find(|path| self.root.join(path).is_file())
    }

    /// Checks every file a generation needs, so that a user learns of all missing files at once.
    pub fn check_generation_files(&self) -> Result<(), ModelError> {
        if !self.root.is_dir() {
            return Err(ModelError::invalid(&self.root, "models folder not found; pass --models or set ARC2FACE_MODELS"));
        }
        let missing: Vec<ModelFile> = GENERATION_FILES.into_iter().filter(|file| !self.path(*file).is_file()).collect();
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
}

/// Reads a JSON file; the error names the file and says what is wrong with it.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::invalid(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::invalid(path, format!("malformed config: {e}")))
}

/// Weights from a safetensors file, read tensor by tensor, converted to `dtype` on `device`.
pub fn load_safetensors(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>, ModelError> {
    let file = weights::SafetensorsFile::open(path).map_err(|e| ModelError::invalid(path, e))?;
    Ok(weights::Weights::new(file, None).into_var_builder(dtype, device))
}

/// Weights from a torch zip pickle holding a flat state dict.
pub fn load_pickle(path: &Path, dtype: DType, device: &Device) -> candle_core::Result<VarBuilder<'static>> {
    let tensors = candle_core::pickle::read_all(path)?.into_iter().collect();
    Ok(VarBuilder::from_tensors(tensors, dtype, device))
}
