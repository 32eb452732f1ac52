//! The one place that runs a generation end to end. The CLI calls it directly; the GUI's worker
//! thread calls it and forwards its events.
//!
//! Reads like diffusers' pipeline: check inputs → encode the identity → set timesteps → prepare
//! latents → denoise (a per-step callback that can cancel) → decode.

pub mod runtime;
pub mod spec;

use candle_core::{DType, Tensor};
use image::RgbImage;

use crate::diffusion::controlnet::{ControlNet, ControlNetConfig};
use crate::diffusion::expression_adapter::ExpressionAdapter;
use crate::diffusion::id_encoder::{IdEncoder, IdEncoderConfig};
use crate::diffusion::lora::{LoraDeltas, UNetLayout};
use crate::diffusion::noise::{self, TorchGenerator};
use crate::diffusion::reference_adapter::{ReferenceBank, ReferenceCall};
use crate::diffusion::schedulers::{NoiseSchedule, Scheduler, SchedulerConfig};
use crate::diffusion::unet::{Conditioning, ExpressionTokens, UNet, UNetConfig};
use crate::diffusion::vae::{self, Vae, VaeConfig, VaeEncoder};
use crate::models::weights::{SafetensorsFile, Weights};
use crate::models::{self, ModelError, ModelFile, ModelsDir, first_line};
use crate::pose::{self, HeadModel};
pub use runtime::{DeviceChoice, Precision, Runtime, RuntimeSpec, set_cpu_threads};
pub use spec::{
    ExpressionSpec, FaceRef, GenerationSpec, HeadMesh, IdentitySource, ImageMetadata, LoadedFile, LoraSpec, PoseSpec, PoseTarget,
    ReferenceSpec, Sweep,
};

/// The largest image side we accept: attention memory grows with the fourth power of the side.
pub const MAX_SIZE: usize = 1024;
/// The most images one job makes.
pub const MAX_IMAGES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A request the models cannot serve; the message says why.
    #[error("{0}")]
    Input(String),
    /// A device or precision this machine or build cannot run; the message says what to use.
    #[error("{0}")]
    Unsupported(String),
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// A finished image could not be stored (full disk, a folder that cannot be written).
    #[error("{0}")]
    Output(String),
    #[error("computation failed: {0}")]
    Compute(String),
}

impl From<candle_core::Error> for EngineError {
    fn from(error: candle_core::Error) -> Self {
        // candle's messages may carry a whole backtrace after the first line.
        let message = first_line(&error.to_string());
        if message.to_lowercase().contains("out of memory") { EngineError::OutOfMemory(message) } else { EngineError::Compute(message) }
    }
}

/// What kind of trouble an error is, so that a user interface can suggest the fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    MissingFile,
    CorruptFile,
    BadInput,
    Unsupported,
    OutOfMemory,
    Output,
    Internal,
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Model(ModelError::Missing { .. }) => ErrorKind::MissingFile,
            EngineError::Model(ModelError::Invalid { .. }) => ErrorKind::CorruptFile,
            EngineError::Input(_) => ErrorKind::BadInput,
            EngineError::Unsupported(_) => ErrorKind::Unsupported,
            EngineError::OutOfMemory(_) => ErrorKind::OutOfMemory,
            EngineError::Output(_) => ErrorKind::Output,
            EngineError::Compute(_) => ErrorKind::Internal,
        }
    }
}

/// The image side Arc2Face was trained at: a spec without a size gets the models' own, this for
/// the real models (the UI assumes it before the models are loaded).
pub const TRAINED_SIZE: usize = 512;

/// A batch of images of one identity, as the spec describes it.
pub struct Job {
    pub spec: GenerationSpec,
    /// A raw ArcFace vector; the pipeline L2-normalises it.
    pub identity: Vec<f32>,
    /// Initial latents `(N, C, h, w)`, one row per image, instead of seeded noise; the spec then
    /// has no seed.
    pub initial_latents: Option<Tensor>,
    /// The conditioning image of a pose given as an image ([`PoseTarget::Image`]).
    pub pose_image: Option<RgbImage>,
    /// The photo whose look the images keep ([`GenerationSpec::reference`]), FFHQ-aligned at the
    /// image size.
    pub reference_image: Option<RgbImage>,
}

impl Job {
    /// A job of `spec` for `identity`, from seeded noise, with no pose image or reference photo.
    pub fn new(spec: GenerationSpec, identity: Vec<f32>) -> Self {
        Self { spec, identity, initial_latents: None, pose_image: None, reference_image: None }
    }
}

/// What the per-step callback sees.
pub struct StepProgress<'a> {
    /// Which image of the job, from 0.
    pub image_index: usize,
    /// Steps done so far for this image, from 1.
    pub step: usize,
    pub steps: usize,
    /// The latents after this step (f32).
    pub latents: &'a Tensor,
    /// The clean latents predicted at this step (f32), for previews.
    pub predicted_x0: &'a Tensor,
}

/// The callback's answer: go on, or stop the job before the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Cancel,
}

pub struct GeneratedImage {
    pub index: usize,
    pub image: RgbImage,
    /// Final latents `(1, C, h, w)` f32, before division by the VAE scaling factor.
    pub latents: Tensor,
    /// What the image's PNG records about it.
    pub metadata: ImageMetadata,
}

/// How a job ended when nothing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Completed,
    /// Stopped by the callback; the images finished before were delivered.
    Cancelled,
}

/// A fresh seed below 2³²: torch seeds its generator with the low 32 bits only, so larger seeds
/// would only alias smaller ones.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    hasher.write_u128(now);
    hasher.finish() & 0xFFFF_FFFF
}

/// What the models are given for one image besides its latents, batched like the UNet's input
/// (both halves under guidance).
struct ModelInputs<'a> {
    /// The identity context.
    context: Tensor,
    /// The pose ControlNet's image, when the job has a pose.
    control_image: Option<Tensor>,
    /// The Expression Adapter's tokens, when the job has an expression.
    expression_tokens: Option<Tensor>,
    /// The Reference Adapter's bank, when the job keeps a photo's look.
    reference_bank: Option<&'a ReferenceBank>,
}

/// The loaded Arc2Face models.
pub struct Arc2FacePipeline {
    encoder: IdEncoder,
    /// The empty prompt's embedding; it never changes for a loaded encoder.
    unconditional: Tensor,
    /// `None` only when building it again (for other LoRAs) failed; the next job tries again.
    unet: Option<UNet>,
    unet_config: UNetConfig,
    /// The LoRAs merged into `unet`.
    unet_loras: Vec<LoraSpec>,
    vae: Vae,
    vae_config: VaeConfig,
    /// Loaded with the first job that asks for a pose.
    controlnet: Option<ControlNet>,
    /// The head mesh the last pose was rendered with.
    head: Option<(HeadMesh, HeadModel)>,
    /// Loaded (and attached to the UNet) with the first job that asks for an expression.
    expression_adapter: Option<ExpressionAdapter>,
    /// Whether the Reference Adapter's LoRA is attached to the UNet (loaded with the first job
    /// that keeps a photo's look, and again whenever the UNet is rebuilt).
    reference_lora: bool,
    /// The VAE's encoder, loaded with the first job that encodes a photo.
    vae_encoder: Option<VaeEncoder>,
    schedule: NoiseSchedule,
    runtime: Runtime,
    models: ModelsDir,
    /// The files of the models every job uses, in the order they were read.
    files: Vec<LoadedFile>,
    /// The LoRA files merged into the UNet.
    lora_files: Vec<LoadedFile>,
    /// The ControlNet's files, once it is loaded.
    controlnet_files: Vec<LoadedFile>,
    /// The Expression Adapter's file, once it is loaded.
    adapter_files: Vec<LoadedFile>,
    /// The Reference Adapter's file, once it is loaded.
    reference_files: Vec<LoadedFile>,
}

impl Arc2FacePipeline {
    /// Loads every model of a generation from `models` for `runtime`.
    pub fn load(models: &ModelsDir, runtime: &Runtime) -> Result<Self, EngineError> {
        models.check_generation_files()?;
        let (device, dtype) = (&runtime.device, runtime.dtype);
        let mut files = Vec::new();
        let mut read = |file: ModelFile| -> Result<std::path::PathBuf, ModelError> {
            let path = models.existing(file)?;
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            files.push(LoadedFile { path: file.relative_path.to_string(), bytes });
            Ok(path)
        };

        let scheduler_config: SchedulerConfig = models::read_json(&read(models::SCHEDULER_CONFIG)?)?;
        let schedule =
            NoiseSchedule::from_config(&scheduler_config).map_err(|e| ModelError::invalid(&models.path(models::SCHEDULER_CONFIG), e))?;

        let encoder_config: IdEncoderConfig = models::read_json(&read(models::ENCODER_CONFIG)?)?;
        let encoder_path = read(models::ENCODER_WEIGHTS)?;
        let unet_config: UNetConfig = models::read_json(&read(models::UNET_CONFIG)?)?;
        if unet_config.cross_attention_dim() != encoder_config.hidden_size {
            return Err(ModelError::invalid(
                &models.path(models::UNET_CONFIG),
                format!(
                    "cross_attention_dim {} does not match the encoder's hidden_size {}",
                    unet_config.cross_attention_dim(),
                    encoder_config.hidden_size
                ),
            )
            .into());
        }
        let unet_path = read(models::UNET_WEIGHTS)?;
        let vae_config: VaeConfig = models::read_json(&read(models::VAE_CONFIG)?)?;
        if vae_config.latent_channels != unet_config.in_channels() || unet_config.in_channels() != unet_config.out_channels {
            return Err(ModelError::invalid(
                &models.path(models::VAE_CONFIG),
                format!(
                    "latent_channels {} does not match the UNet's in/out channels {}/{}",
                    vae_config.latent_channels,
                    unet_config.in_channels(),
                    unet_config.out_channels
                ),
            )
            .into());
        }
        let vae_path = read(models::VAE_WEIGHTS)?;

        // The encoder is read on a thread of its own while this one reads the UNet and the VAE:
        // reading weights is bound by page faults and copies, which two threads overlap.
        let (encoder, unet, vae) = std::thread::scope(|scope| {
            let encoder = scope.spawn(|| -> Result<(IdEncoder, Tensor), EngineError> {
                let encoder = models::load_pickle(&encoder_path, dtype, device)
                    .and_then(|vb| IdEncoder::new(vb, &encoder_config))
                    .map_err(|e| ModelError::invalid(&encoder_path, e))?;
                let unconditional = encoder.encode_unconditional()?;
                Ok((encoder, unconditional))
            });
            let unet = load_unet(&unet_path, &unet_config, LoraDeltas::default(), runtime);
            let vae = models::load_safetensors(&vae_path, dtype, device)
                .and_then(|vb| Vae::new(vb, &vae_config).map_err(|e| ModelError::invalid(&vae_path, e)));
            let encoder = encoder.join().unwrap_or_else(|_| Err(EngineError::Compute("reading the identity encoder failed".into())));
            (encoder, unet, vae)
        });
        let ((encoder, unconditional), unet, vae) = (encoder?, unet?, vae?);

        Ok(Self {
            encoder,
            unconditional,
            unet: Some(unet),
            unet_config,
            unet_loras: Vec::new(),
            vae,
            vae_config,
            controlnet: None,
            expression_adapter: None,
            reference_lora: false,
            vae_encoder: None,
            schedule,
            runtime: runtime.clone(),
            models: models.clone(),
            files,
            lora_files: Vec::new(),
            controlnet_files: Vec::new(),
            adapter_files: Vec::new(),
            reference_files: Vec::new(),
            head: None,
        })
    }

    /// Makes the models in memory those `spec` needs: the UNet is built again, from its file,
    /// when the job asks for other LoRAs (or scales) than the ones merged into it.
    pub fn prepare(&mut self, spec: &GenerationSpec) -> Result<(), EngineError> {
        if spec.pose.is_some() && self.controlnet.is_none() {
            self.controlnet = Some(self.load_controlnet()?);
        }
        if let Some(PoseSpec { target: PoseTarget::Head { mesh, .. }, .. }) = &spec.pose
            && self.head.as_ref().is_none_or(|(loaded, _)| loaded != mesh)
        {
            self.head = Some((mesh.clone(), load_head(&self.models, mesh)?));
        }
        if spec.loras != self.unet_loras || self.unet.is_none() {
            self.rebuild_unet(spec)?;
        }
        if spec.expression.is_some() && self.expression_adapter.is_none() {
            let adapter = self.load_expression_adapter()?;
            self.attach_expression_adapter(&adapter)?;
            self.expression_adapter = Some(adapter);
        }
        if spec.reference.is_some() {
            if !self.reference_lora {
                self.attach_reference_lora()?;
            }
            if self.vae_encoder.is_none() {
                let path = self.models.existing(models::VAE_WEIGHTS)?;
                let vb = models::load_safetensors(&path, self.runtime.dtype, &self.runtime.device)?;
                self.vae_encoder = Some(VaeEncoder::new(vb, &self.vae_config).map_err(|e| ModelError::invalid(&path, e))?);
            }
        }
        Ok(())
    }

    /// Reads the Reference Adapter's LoRA and keeps it beside the UNet's attention projections.
    fn attach_reference_lora(&mut self) -> Result<(), EngineError> {
        let path = self.models.existing(models::REFERENCE_ADAPTER)?;
        let unet_path = self.models.existing(models::UNET_WEIGHTS)?;
        let header = SafetensorsFile::open(&unet_path).map_err(|e| ModelError::invalid(&unet_path, e))?;
        let layout = UNetLayout::new(header.names().filter_map(|name| Some((name, header.shape(name)?))), &self.unet_config);
        let file = SafetensorsFile::open(&path).map_err(|e| ModelError::invalid(&path, e))?;
        let tensors = file.read_all().map_err(|e| ModelError::invalid(&path, e))?;
        let mut deltas = LoraDeltas::default();
        deltas
            .add(&tensors, file.metadata(), 1.0, &layout)
            .map_err(|e| ModelError::invalid(&path, format!("not a LoRA for this UNet: {e}")))?;
        let side_paths = deltas.into_side_paths(self.runtime.dtype, &self.runtime.device).map_err(|e| ModelError::invalid(&path, e))?;
        let Some(unet) = &mut self.unet else { return Err(EngineError::Compute("the UNet is not loaded".into())) };
        unet.attach_side_paths(side_paths).map_err(|e| ModelError::invalid(&path, format!("not a Reference Adapter: {e}")))?;
        self.reference_lora = true;
        self.reference_files = vec![LoadedFile {
            path: models::REFERENCE_ADAPTER.relative_path.into(),
            bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        }];
        Ok(())
    }

    /// Builds the UNet again from its file with the LoRAs `spec` asks for (and the Expression
    /// Adapter attached again, if it is loaded).
    fn rebuild_unet(&mut self, spec: &GenerationSpec) -> Result<(), EngineError> {
        let mut deltas = LoraDeltas::default();
        let unet_path = self.models.existing(models::UNET_WEIGHTS)?;
        let header = SafetensorsFile::open(&unet_path).map_err(|e| ModelError::invalid(&unet_path, e))?;
        let layout = UNetLayout::new(header.names().filter_map(|name| Some((name, header.shape(name)?))), &self.unet_config);
        let mut lora_files = Vec::new();
        for lora in &spec.loras {
            let path = self.lora_path(lora)?;
            let file = SafetensorsFile::open(&path).map_err(|e| ModelError::invalid(&path, e))?;
            let tensors = file.read_all().map_err(|e| ModelError::invalid(&path, e))?;
            deltas
                .add(&tensors, file.metadata(), lora.scale, &layout)
                .map_err(|e| ModelError::invalid(&path, format!("not a LoRA for this UNet: {e}")))?;
            lora_files.push(LoadedFile { path: lora.file.clone(), bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) });
        }
        // The old UNet goes first, so that two are never in memory at once.
        self.unet_loras.clear();
        self.lora_files.clear();
        self.unet = None;
        self.reference_lora = false;
        self.unet = Some(load_unet(&unet_path, &self.unet_config, deltas, &self.runtime)?);
        self.unet_loras = spec.loras.clone();
        self.lora_files = lora_files;
        if let Some(adapter) = self.expression_adapter.take() {
            self.attach_expression_adapter(&adapter)?;
            self.expression_adapter = Some(adapter);
        }
        if spec.reference.is_some() {
            self.attach_reference_lora()?;
        }
        Ok(())
    }

    /// The pose ControlNet from the models folder, checked against the models it works with.
    fn load_controlnet(&mut self) -> Result<ControlNet, EngineError> {
        let config_path = self.models.existing(models::CONTROLNET_CONFIG)?;
        let weights_path = self.models.existing(models::CONTROLNET_WEIGHTS)?;
        let config: ControlNetConfig = models::read_json(&config_path)?;
        if config.down.cross_attention_dim != self.encoder.hidden_size() || config.image_scale_factor() != self.vae_config.scale_factor() {
            return Err(ModelError::invalid(
                &config_path,
                format!(
                    "a ControlNet for other models (cross_attention_dim {}, image scale {}; these models need {} and {})",
                    config.down.cross_attention_dim,
                    config.image_scale_factor(),
                    self.encoder.hidden_size(),
                    self.vae_config.scale_factor()
                ),
            )
            .into());
        }
        let vb = models::load_safetensors(&weights_path, self.runtime.dtype, &self.runtime.device)?;
        let controlnet = ControlNet::new(vb, &config).map_err(|e| ModelError::invalid(&weights_path, e))?;
        self.controlnet_files = [(models::CONTROLNET_CONFIG, &config_path), (models::CONTROLNET_WEIGHTS, &weights_path)]
            .into_iter()
            .map(|(file, path)| LoadedFile {
                path: file.relative_path.into(),
                bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            })
            .collect();
        Ok(controlnet)
    }

    /// The Expression Adapter from the models folder: its projection and its per-layer
    /// attention weights, checked against the UNet.
    fn load_expression_adapter(&mut self) -> Result<ExpressionAdapter, EngineError> {
        let path = self.models.existing(models::EXPRESSION_ADAPTER)?;
        let read = |key: &str| -> Result<std::collections::HashMap<String, Tensor>, ModelError> {
            let tensors = candle_core::pickle::read_all_with_key(&path, Some(key)).map_err(|e| ModelError::invalid(&path, e))?;
            tensors
                .into_iter()
                .map(|(name, t)| Ok((name, t.to_dtype(self.runtime.dtype)?.to_device(&self.runtime.device)?)))
                .collect::<candle_core::Result<_>>()
                .map_err(|e| ModelError::invalid(&path, e))
        };
        let (image_proj, ip_adapter) = (read("image_proj")?, read("ip_adapter")?);
        let Some(unet) = &mut self.unet else { return Err(EngineError::Compute("the UNet is not loaded".into())) };
        let adapter = ExpressionAdapter::new(&image_proj, &ip_adapter, unet.cross_attention_layers())
            .map_err(|e| ModelError::invalid(&path, format!("not an Expression Adapter for this UNet: {e}")))?;
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        self.adapter_files = vec![LoadedFile { path: models::EXPRESSION_ADAPTER.relative_path.into(), bytes }];
        Ok(adapter)
    }

    fn attach_expression_adapter(&mut self, adapter: &ExpressionAdapter) -> Result<(), EngineError> {
        let Some(unet) = &mut self.unet else { return Err(EngineError::Compute("the UNet is not loaded".into())) };
        Ok(unet.attach_expression_adapter(adapter.layers.clone())?)
    }

    /// Where a LoRA file is: relative paths are in the models folder (a missing one there is
    /// named with what it is for).
    fn lora_path(&self, lora: &LoraSpec) -> Result<std::path::PathBuf, ModelError> {
        let path = std::path::Path::new(&lora.file);
        if path.is_absolute() {
            return if path.is_file() {
                Ok(path.to_path_buf())
            } else {
                Err(ModelError::Missing { path: path.to_path_buf(), what: "a LoRA file the job asks for" })
            };
        }
        match models::ALL_FILES.into_iter().find(|f| f.relative_path == lora.file) {
            Some(file) => self.models.existing(file),
            None => {
                let path = self.models.root().join(path);
                if path.is_file() { Ok(path) } else { Err(ModelError::Missing { path, what: "a LoRA file the job asks for" }) }
            }
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The image side the UNet was trained at: `sample_size × VAE scale factor` (512 for SD1.5).
    pub fn default_size(&self) -> usize {
        self.unet_config.sample_size * self.vae_config.scale_factor()
    }

    /// The image side a spec asks for, its default resolved.
    pub fn size_of(&self, spec: &GenerationSpec) -> usize {
        spec.size.unwrap_or_else(|| self.default_size())
    }

    /// Image pixels per latent pixel.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_config.scale_factor()
    }

    /// Image sides must be multiples of this.
    pub fn size_multiple(&self) -> usize {
        self.vae_config.scale_factor() * self.unet_config.latent_multiple()
    }

    /// The longest identity vector the encoder takes (its hidden size).
    pub fn max_identity_len(&self) -> usize {
        self.encoder.hidden_size()
    }

    /// Every model file a job of `spec` reads, with its size: the base models, its LoRAs, the
    /// ControlNet for a pose.
    pub fn files_for(&self, spec: &GenerationSpec) -> Vec<LoadedFile> {
        let controlnet = spec.pose.is_some().then_some(&self.controlnet_files).into_iter().flatten();
        let adapter = spec.expression.is_some().then_some(&self.adapter_files).into_iter().flatten();
        let reference = spec.reference.is_some().then_some(&self.reference_files).into_iter().flatten();
        let head = match &spec.pose {
            Some(PoseSpec { target: PoseTarget::Head { mesh: HeadMesh::Flame { file }, .. }, .. }) => {
                let bytes = std::fs::metadata(self.models.root().join(file)).map(|m| m.len()).unwrap_or(0);
                Some(LoadedFile { path: file.clone(), bytes })
            }
            _ => None,
        };
        self.files.iter().chain(&self.lora_files).chain(controlnet).chain(adapter).chain(reference).cloned().chain(head).collect()
    }

    /// The shape of one image's latents at `size` pixels.
    pub fn latent_shape(&self, size: usize) -> (usize, usize, usize, usize) {
        let side = size / self.vae_config.scale_factor();
        (1, self.vae_config.latent_channels, side, side)
    }

    /// Checks a job before any work starts, so that a bad request fails at once.
    pub fn check(&self, job: &Job) -> Result<(), EngineError> {
        let input = |msg: String| Err(EngineError::Input(msg));
        let id = &job.identity;
        if id.is_empty() || id.len() > self.max_identity_len() {
            return input(format!("the identity vector has {} values; this encoder takes 1 to {}", id.len(), self.max_identity_len()));
        }
        let norm = crate::l2_norm(id);
        if !norm.is_finite() || norm == 0.0 {
            return input("the identity vector is zero or not finite".into());
        }
        let spec = &job.spec;
        let max_steps = spec.sampler.max_steps(self.schedule.train_timesteps());
        if spec.steps == 0 || spec.steps > max_steps {
            return input(format!("steps must be between 1 and {max_steps} for {}, got {}", spec.sampler.label(), spec.steps));
        }
        if !spec.guidance.is_finite() || !(0.0..=50.0).contains(&spec.guidance) {
            return input(format!("guidance must be a number from 0 to 50, got {}", spec.guidance));
        }
        let size = self.size_of(spec);
        let multiple = self.size_multiple();
        if size == 0 || !size.is_multiple_of(multiple) || size > MAX_SIZE {
            return input(format!("size must be a multiple of {multiple} between {multiple} and {MAX_SIZE}, got {size}"));
        }
        if spec.num_images == 0 || spec.num_images > MAX_IMAGES {
            return input(format!("the number of images must be between 1 and {MAX_IMAGES}, got {}", spec.num_images));
        }
        match (&job.initial_latents, spec.seed) {
            (Some(_), None) if spec.sampler.draws_noise() => {
                return input(format!(
                    "{} adds noise at each step: with given latents it needs a seed for that noise",
                    spec.sampler.label()
                ));
            }
            // With given latents a seed only feeds the noise a sampler adds at each step.
            (Some(latents), _) => {
                let (_, c, h, w) = self.latent_shape(size);
                let expected = (spec.num_images, c, h, w);
                if latents.dims4().ok() != Some(expected) {
                    return input(format!(
                        "the initial latents have shape {:?}; {} images of {size} px need {expected:?}",
                        latents.dims(),
                        spec.num_images
                    ));
                }
                let values = latents.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                if values.iter().any(|v| !v.is_finite()) {
                    return input("the initial latents hold values that are not finite".into());
                }
            }
            (None, Some(_)) => {
                let (_, c, h, w) = self.latent_shape(size);
                if c * h * w < noise::MIN_VALUES {
                    return input(format!("{size} px is too small for seeded noise"));
                }
            }
            (None, None) => return input("a job needs a seed or initial latents".into()),
        }
        if let Some(pose) = &spec.pose {
            let scale = pose.controlnet_scale;
            if !scale.is_finite() || !(0.0..=5.0).contains(&scale) {
                return input(format!("the ControlNet scale must be a number from 0 to 5, got {scale}"));
            }
            let (start, end) = (pose.control_start, pose.control_end);
            if !(0.0 <= start && start < end && end <= 1.0) {
                return input(format!("the ControlNet's start and end must satisfy 0 ≤ start < end ≤ 1, got {start} and {end}"));
            }
            match (&pose.target, &job.pose_image) {
                (PoseTarget::Image { file }, Some(image)) if (image.width() as usize, image.height() as usize) != (size, size) => {
                    return input(format!(
                        "the pose image {file} is {}×{}; for {size} px images it must be {size}×{size} (arc2face render-pose --size {size} makes one)",
                        image.width(),
                        image.height()
                    ));
                }
                (PoseTarget::Image { file }, None) => return input(format!("the pose image {file} was not given with the job")),
                (PoseTarget::Image { .. }, Some(_)) | (PoseTarget::Head { .. }, _) => {}
            }
        }
        if let Some(reference) = &spec.reference {
            if !(reference.scale.is_finite() && (0.0..=1.0).contains(&reference.scale)) {
                return input(format!("the reference scale must be a number from 0 to 1, got {}", reference.scale));
            }
            match &job.reference_image {
                None => return input(format!("the reference photo {} was not given with the job", reference.photo)),
                Some(image) if (image.width() as usize, image.height() as usize) != (size, size) => {
                    return input(format!(
                        "the aligned reference photo is {}×{}; {size} px images need {size}×{size}",
                        image.width(),
                        image.height()
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Runs a job: each image in turn, calling `on_step` after every denoising step and
    /// `on_image` when an image is finished. Stops before the next step when `on_step` says so.
    /// Loads what the job needs that is not in memory yet ([`Arc2FacePipeline::prepare`]).
    pub fn run(
        &mut self,
        job: &Job,
        on_step: &mut dyn FnMut(&StepProgress) -> Flow,
        on_image: &mut dyn FnMut(GeneratedImage) -> Result<(), EngineError>,
    ) -> Result<JobOutcome, EngineError> {
        self.check(job)?;
        self.prepare(&job.spec)?;
        let size = self.size_of(&job.spec);
        let context = self.prompt_embeddings(&job.identity, job.spec.guidance)?;
        let reference_bank = match &job.reference_image {
            Some(image) if job.spec.reference.is_some() => Some(self.reference_bank(image, &job.identity)?),
            _ => None,
        };
        let job_number = random_seed();
        for index in 0..job.spec.num_images {
            let spec = GenerationSpec { size: Some(size), ..job.spec.image(index) };
            // Image i's own generator: it draws the initial latents (unless they are given),
            // then any noise the sampler adds, continuing its stream as torch's does.
            let mut generator = spec.seed.map(TorchGenerator::new);
            let initial = match (&job.initial_latents, &mut generator) {
                (Some(latents), _) => latents.narrow(0, index, 1)?.to_dtype(DType::F32)?.to_device(&self.runtime.device)?,
                (None, Some(generator)) => generator.randn_tensor(self.latent_shape(size), &self.runtime.device)?,
                (None, None) => return Err(EngineError::Input("a job needs a seed or initial latents".into())),
            };
            let inputs = ModelInputs {
                control_image: self.control_image(&spec, job.pose_image.as_ref(), context.dim(0)?)?,
                expression_tokens: self.expression_tokens(&spec, context.dim(0)?)?,
                context: context.clone(),
                reference_bank: reference_bank.as_ref(),
            };
            let Some(latents) = self.denoise(&inputs, initial, index, &spec, generator.as_mut(), on_step)? else {
                return Ok(JobOutcome::Cancelled);
            };
            let image = self.decode(&latents)?.remove(0);
            let image = match spec.pose.as_ref().map(PoseSpec::roll) {
                Some(roll) if roll != 0.0 => pose::rotate_image(&image, roll),
                _ => image,
            };
            let metadata =
                ImageMetadata { job: job_number, sweep: job.spec.sweep.clone(), ..self.metadata(spec, index, job.spec.num_images) };
            on_image(GeneratedImage { index, image, latents, metadata })?;
        }
        Ok(JobOutcome::Completed)
    }

    /// The pose ControlNet's input for an image of `spec`: `(batch, 3, H, W)` in [0, 1], the
    /// 8-bit image divided by 255 as diffusers prepares it, once per half of the guidance batch.
    fn control_image(&self, spec: &GenerationSpec, pose_image: Option<&RgbImage>, batch: usize) -> Result<Option<Tensor>, EngineError> {
        let Some(pose) = &spec.pose else { return Ok(None) };
        let size = self.size_of(spec);
        let rendered;
        let image = match (&pose.target, pose_image, &self.head) {
            (PoseTarget::Image { .. }, Some(image), _) => image,
            (PoseTarget::Image { file }, None, _) => {
                return Err(EngineError::Input(format!("the pose image {file} was not given with the job")));
            }
            (PoseTarget::Head { pose, .. }, _, Some((_, head))) => {
                rendered = pose::render_normals(head, &pose.clamped(), size);
                &rendered
            }
            (PoseTarget::Head { .. }, _, None) => return Err(EngineError::Compute("the head mesh is not loaded".into())),
        };
        let (width, height) = (image.width() as usize, image.height() as usize);
        let pixels = Tensor::from_vec(image.as_raw().clone(), (height, width, 3), &self.runtime.device)?;
        let tensor = (pixels.permute((2, 0, 1))?.to_dtype(DType::F32)? / 255.0)?.unsqueeze(0)?;
        Ok(Some(tensor.repeat((batch, 1, 1, 1))?.to_dtype(self.runtime.dtype)?))
    }

    /// The Reference Adapter's bank for the photo `image` (aligned, at the image size), with the
    /// identity's embedding as the context: the photo's latents are the mean of the VAE's
    /// posterior times its scaling factor.
    fn reference_bank(&self, image: &RgbImage, identity: &[f32]) -> Result<ReferenceBank, EngineError> {
        let (Some(encoder), Some(unet)) = (&self.vae_encoder, &self.unet) else {
            return Err(EngineError::Compute("the VAE encoder or the UNet is not loaded".into()));
        };
        let (width, height) = (image.width() as usize, image.height() as usize);
        let pixels = Tensor::from_vec(image.as_raw().clone(), (height, width, 3), &self.runtime.device)?;
        // [0, 255] → [−1, 1] in f32, in the order diffusers' image processor does it.
        let pixels = (((pixels.permute((2, 0, 1))?.to_dtype(DType::F32)? / 255.0)? * 2.0)? - 1.0)?.unsqueeze(0)?;
        let latents = encoder.encode_mean(&pixels.to_dtype(self.runtime.dtype)?)?;
        let context = self.encoder.encode_identity(identity)?.to_dtype(self.runtime.dtype)?;
        Ok(unet.reference_bank(&latents, &context)?)
    }

    /// The Expression Adapter's tokens for an image of `spec`: under guidance, the unconditional
    /// half's for an all-zero expression (which are not zero: the projection has biases) and the
    /// conditional half's for the expression.
    fn expression_tokens(&self, spec: &GenerationSpec, batch: usize) -> Result<Option<Tensor>, EngineError> {
        let (Some(expression), Some(adapter)) = (&spec.expression, &self.expression_adapter) else { return Ok(None) };
        let values = Tensor::new(&expression.expression.values()[..], &self.runtime.device)?.unsqueeze(0)?;
        let values = if batch == 2 { Tensor::cat(&[&values.zeros_like()?, &values], 0)? } else { values };
        Ok(Some(adapter.tokens(&values.to_dtype(self.runtime.dtype)?)?))
    }

    /// What image `index` of `count` records about itself.
    fn metadata(&self, spec: GenerationSpec, index: usize, count: usize) -> ImageMetadata {
        let size = self.size_of(&spec);
        ImageMetadata {
            format: spec::METADATA_FORMAT,
            app: env!("CARGO_PKG_NAME").into(),
            app_version: env!("CARGO_PKG_VERSION").into(),
            index,
            count,
            job: 0,
            sweep: None,
            width: size,
            height: size,
            ran_on: self.runtime.describe(),
            model_files: self.files_for(&spec),
            created_unix_ms: crate::unix_ms(std::time::SystemTime::now()),
            identity_match: None,
            spec,
        }
    }

    /// The UNet's context for one image: `[unconditional, conditional]` with guidance > 1,
    /// else the conditional embedding alone.
    fn prompt_embeddings(&self, identity: &[f32], guidance: f64) -> Result<Tensor, EngineError> {
        let conditional = self.encoder.encode_identity(identity)?;
        let context = if guidance > 1.0 { Tensor::cat(&[&self.unconditional, &conditional], 0)? } else { conditional };
        Ok(context.to_dtype(self.runtime.dtype)?)
    }

    /// Denoises one image's standard-normal latents `(1, C, h, w)`; `None` when the callback
    /// cancelled.
    fn denoise(
        &self,
        inputs: &ModelInputs,
        latents: Tensor,
        image_index: usize,
        spec: &GenerationSpec,
        mut generator: Option<&mut TorchGenerator>,
        on_step: &mut dyn FnMut(&StepProgress) -> Flow,
    ) -> Result<Option<Tensor>, EngineError> {
        let context = &inputs.context;
        let guided = context.dim(0)? == 2;
        let dtype = self.runtime.dtype;
        let Some(unet) = &self.unet else {
            return Err(EngineError::Compute("the UNet is not loaded".into()));
        };
        let mut scheduler = Scheduler::new(spec.sampler, &self.schedule, spec.steps);
        let timesteps = scheduler.timesteps().to_vec();
        let mut latents = (latents * scheduler.init_noise_sigma())?;
        for (i, &timestep) in timesteps.iter().enumerate() {
            let model_input = scheduler.scale_model_input(&latents, i)?.to_dtype(dtype)?;
            let model_input = if guided { Tensor::cat(&[&model_input, &model_input], 0)? } else { model_input };
            // The ControlNet sees the same input and context; outside its window of steps it
            // would only add zeros, so it does not run.
            let control = match (&spec.pose, &inputs.control_image, &self.controlnet) {
                (Some(pose), Some(image), Some(controlnet)) if pose.active_at(i, timesteps.len()) => {
                    Some(controlnet.forward(&model_input, timestep, &Conditioning::context(context), image, pose.controlnet_scale)?)
                }
                _ => None,
            };
            let expression = match (&spec.expression, &inputs.expression_tokens) {
                (Some(expression), Some(tokens)) => Some(ExpressionTokens { tokens, scale: expression.scale }),
                _ => None,
            };
            let reference = match (&spec.reference, inputs.reference_bank) {
                (Some(reference), Some(bank)) => Some(ReferenceCall::Attend { bank, lora_scale: reference.scale, guided }),
                _ => None,
            };
            let conditioning = Conditioning { context, control: control.as_ref(), expression, reference };
            let eps = unet.forward(&model_input, timestep, &conditioning)?.to_dtype(DType::F32)?;
            let eps = if guided {
                let (unconditional, conditional) = (eps.get(0)?, eps.get(1)?);
                (&unconditional + ((conditional - &unconditional)? * spec.guidance)?)?.unsqueeze(0)?
            } else {
                eps
            };
            let step = scheduler.step(&eps, &latents, generator.as_deref_mut())?;
            latents = step.prev_sample;
            let progress =
                StepProgress { image_index, step: i + 1, steps: timesteps.len(), latents: &latents, predicted_x0: &step.predicted_x0 };
            if on_step(&progress) == Flow::Cancel {
                return Ok(None);
            }
        }
        Ok(Some(latents))
    }

    /// Decodes final latents `(B, C, h, w)` to 8-bit RGB images.
    pub fn decode(&self, latents: &Tensor) -> Result<Vec<RgbImage>, EngineError> {
        let decoded = self.vae.decode(&latents.to_dtype(self.runtime.dtype)?)?;
        Ok(vae::to_rgb_images(&decoded)?)
    }
}

/// The head mesh `mesh` names: the built-in one, or a FLAME file of the models folder.
pub fn load_head(models: &ModelsDir, mesh: &HeadMesh) -> Result<HeadModel, EngineError> {
    match mesh {
        HeadMesh::Builtin => HeadModel::builtin().map_err(EngineError::Compute),
        HeadMesh::Flame { file } => {
            let path = models.root().join(file);
            if !path.is_file() {
                return Err(ModelError::Missing { path, what: "FLAME head model" }.into());
            }
            Ok(HeadModel::from_flame_file(&path).map_err(|e| ModelError::invalid(&path, e))?)
        }
    }
}

/// The UNet from its weights file, with `deltas` merged in f32 as the weights are read.
fn load_unet(path: &std::path::Path, config: &UNetConfig, deltas: LoraDeltas, runtime: &Runtime) -> Result<UNet, EngineError> {
    let file = SafetensorsFile::open(path).map_err(|e| ModelError::invalid(path, e))?;
    let deltas = if deltas.is_empty() { None } else { Some(std::sync::Arc::new(deltas)) };
    let vb = Weights::new(file, deltas).into_var_builder(runtime.dtype, &runtime.device);
    Ok(UNet::new(vb, config).map_err(|e| ModelError::invalid(path, e))?)
}
