//! The one place that runs a generation end to end. The CLI calls it directly; the GUI's worker
//! thread calls it and forwards its events.
//!
//! Reads like diffusers' pipeline: check inputs → encode the identity → set timesteps → prepare
//! latents → denoise (a per-step callback that can cancel) → decode.

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use crate::diffusion::id_encoder::{IdEncoder, IdEncoderConfig};
use crate::diffusion::noise;
use crate::diffusion::scheduler::{DpmSolverMultistep, SchedulerConfig};
use crate::diffusion::unet::{UNet, UNetConfig};
use crate::diffusion::vae::{self, Vae, VaeConfig};
use crate::models::{self, ModelError, ModelsDir};

/// The largest image side we accept: attention memory grows with the fourth power of the side.
pub const MAX_SIZE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A request the models cannot serve; the message says why.
    #[error("{0}")]
    Input(String),
    #[error("computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

/// Sampling settings shared by every image of a job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    pub steps: usize,
    pub guidance: f64,
    /// Image side in pixels.
    pub size: usize,
}

/// Where a job's initial latents come from.
pub enum InitialNoise {
    /// Image i starts from `torch.randn` seeded with `seed + i`.
    Seed(u64),
    /// Given latents `(N, C, h, w)`, one row per image.
    Latents(Tensor),
}

/// A batch of images of one identity.
pub struct Job {
    /// A raw ArcFace vector; the pipeline L2-normalises it.
    pub identity: Vec<f32>,
    pub num_images: usize,
    pub params: SamplingParams,
    pub noise: InitialNoise,
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
    /// The seed that regenerates this image alone; `None` when the noise was given.
    pub seed: Option<u64>,
    pub image: RgbImage,
    /// Final latents `(1, C, h, w)` f32, before division by the VAE scaling factor.
    pub latents: Tensor,
}

/// How a job ended when nothing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Completed,
    /// Stopped by the callback; the images finished before were delivered.
    Cancelled,
}

/// A model file the pipeline read, for the metadata written beside each image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadedFile {
    pub path: String,
    pub bytes: u64,
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

/// The loaded Arc2Face models.
pub struct Arc2FacePipeline {
    encoder: IdEncoder,
    /// The empty prompt's embedding; it never changes for a loaded encoder.
    unconditional: Tensor,
    unet: UNet,
    unet_config: UNetConfig,
    vae: Vae,
    vae_config: VaeConfig,
    training_sigmas: Vec<f64>,
    device: Device,
    dtype: DType,
    files: Vec<LoadedFile>,
}

impl Arc2FacePipeline {
    /// Loads every model of a generation from `models`, in `dtype` on `device`.
    pub fn load(models: &ModelsDir, device: &Device, dtype: DType) -> Result<Self, EngineError> {
        models.check_generation_files()?;

        let scheduler_config: SchedulerConfig = models.read_config(models::SCHEDULER_CONFIG)?;
        let training_sigmas =
            scheduler_config.training_sigmas().map_err(|e| ModelError::invalid(&models.path(models::SCHEDULER_CONFIG), e))?;

        let encoder_config: IdEncoderConfig = models.read_config(models::ENCODER_CONFIG)?;
        let encoder_path = models.existing(models::ENCODER_WEIGHTS)?;
        let encoder = models::load_pickle(&encoder_path, dtype, device)
            .and_then(|vb| IdEncoder::new(vb, &encoder_config))
            .map_err(|e| ModelError::invalid(&encoder_path, e))?;
        let unconditional = encoder.encode_unconditional()?;

        let unet_config: UNetConfig = models.read_config(models::UNET_CONFIG)?;
        let unet_path = models.existing(models::UNET_WEIGHTS)?;
        if unet_config.cross_attention_dim != encoder.hidden_size() {
            return Err(ModelError::invalid(
                &models.path(models::UNET_CONFIG),
                format!(
                    "cross_attention_dim {} does not match the encoder's hidden_size {}",
                    unet_config.cross_attention_dim,
                    encoder.hidden_size()
                ),
            )
            .into());
        }
        let unet = models::load_safetensors(&unet_path, dtype, device)
            .and_then(|vb| UNet::new(vb, &unet_config))
            .map_err(|e| ModelError::invalid(&unet_path, e))?;

        let vae_config: VaeConfig = models.read_config(models::VAE_CONFIG)?;
        let vae_path = models.existing(models::VAE_WEIGHTS)?;
        if vae_config.latent_channels != unet_config.in_channels || unet_config.in_channels != unet_config.out_channels {
            return Err(ModelError::invalid(
                &models.path(models::VAE_CONFIG),
                format!(
                    "latent_channels {} does not match the UNet's in/out channels {}/{}",
                    vae_config.latent_channels, unet_config.in_channels, unet_config.out_channels
                ),
            )
            .into());
        }
        let vae = models::load_safetensors(&vae_path, dtype, device)
            .and_then(|vb| Vae::new(vb, &vae_config))
            .map_err(|e| ModelError::invalid(&vae_path, e))?;

        let files = models::GENERATION_FILES
            .iter()
            .map(|file| LoadedFile {
                path: file.relative_path.to_string(),
                bytes: std::fs::metadata(models.path(*file)).map(|m| m.len()).unwrap_or(0),
            })
            .collect();
        Ok(Self { encoder, unconditional, unet, unet_config, vae, vae_config, training_sigmas, device: device.clone(), dtype, files })
    }

    /// The image side the UNet was trained at: `sample_size × VAE scale factor` (512 for SD1.5).
    pub fn default_size(&self) -> usize {
        self.unet_config.sample_size * self.vae_config.scale_factor()
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

    pub fn files(&self) -> &[LoadedFile] {
        &self.files
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
        let norm = id.iter().map(|v| v * v).sum::<f32>().sqrt();
        if !norm.is_finite() || norm == 0.0 {
            return input("the identity vector is zero or not finite".into());
        }
        let SamplingParams { steps, guidance, size } = job.params;
        let max_steps = self.training_sigmas.len();
        if steps == 0 || steps > max_steps {
            return input(format!("steps must be between 1 and {max_steps}, got {steps}"));
        }
        if !guidance.is_finite() || guidance < 0.0 {
            return input(format!("guidance must be a finite number ≥ 0, got {guidance}"));
        }
        let multiple = self.size_multiple();
        if size == 0 || size % multiple != 0 || size > MAX_SIZE {
            return input(format!("size must be a multiple of {multiple} between {multiple} and {MAX_SIZE}, got {size}"));
        }
        if job.num_images == 0 {
            return input("the number of images must be at least 1".into());
        }
        if let InitialNoise::Latents(latents) = &job.noise {
            let (_, c, h, w) = self.latent_shape(size);
            let expected = (job.num_images, c, h, w);
            if latents.dims4().ok() != Some(expected) {
                return input(format!(
                    "the initial latents have shape {:?}; {} images of {size} px need {expected:?}",
                    latents.dims(),
                    job.num_images
                ));
            }
        }
        Ok(())
    }

    /// Runs a job: each image in turn, calling `on_step` after every denoising step and
    /// `on_image` when an image is finished. Stops before the next step when `on_step` says so.
    pub fn run(
        &self,
        job: &Job,
        on_step: &mut dyn FnMut(&StepProgress) -> Flow,
        on_image: &mut dyn FnMut(GeneratedImage) -> Result<(), EngineError>,
    ) -> Result<JobOutcome, EngineError> {
        self.check(job)?;
        let context = self.prompt_embeddings(&job.identity, job.params.guidance)?;
        for index in 0..job.num_images {
            let (initial, seed) = match &job.noise {
                InitialNoise::Seed(seed) => {
                    let seed = seed.wrapping_add(index as u64);
                    (self.seeded_latents(seed, job.params.size)?, Some(seed))
                }
                InitialNoise::Latents(latents) => (latents.narrow(0, index, 1)?.to_dtype(DType::F32)?.to_device(&self.device)?, None),
            };
            let Some(latents) = self.denoise(&context, initial, index, &job.params, on_step)? else {
                return Ok(JobOutcome::Cancelled);
            };
            let image = self.decode(&latents)?.remove(0);
            on_image(GeneratedImage { index, seed, image, latents })?;
        }
        Ok(JobOutcome::Completed)
    }

    /// The UNet's context for one image: `[unconditional, conditional]` with guidance > 1,
    /// else the conditional embedding alone.
    fn prompt_embeddings(&self, identity: &[f32], guidance: f64) -> Result<Tensor, EngineError> {
        let conditional = self.encoder.encode_identity(identity)?;
        let context = if guidance > 1.0 { Tensor::cat(&[&self.unconditional, &conditional], 0)? } else { conditional };
        Ok(context.to_dtype(self.dtype)?)
    }

    /// torch-compatible seeded noise for one image, made on the host.
    fn seeded_latents(&self, seed: u64, size: usize) -> Result<Tensor, EngineError> {
        let shape = self.latent_shape(size);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        if n < noise::MIN_VALUES {
            return Err(EngineError::Input(format!("{size} px is too small for seeded noise")));
        }
        Ok(Tensor::from_vec(noise::torch_randn(seed, n), shape, &self.device)?)
    }

    /// Denoises one image's latents `(1, C, h, w)`; `None` when the callback cancelled.
    fn denoise(
        &self,
        context: &Tensor,
        mut latents: Tensor,
        image_index: usize,
        params: &SamplingParams,
        on_step: &mut dyn FnMut(&StepProgress) -> Flow,
    ) -> Result<Option<Tensor>, EngineError> {
        let guided = context.dim(0)? == 2;
        let mut scheduler = DpmSolverMultistep::new(&self.training_sigmas, params.steps);
        let timesteps = scheduler.timesteps().to_vec();
        for (i, &timestep) in timesteps.iter().enumerate() {
            let model_input = latents.to_dtype(self.dtype)?;
            let model_input = if guided { Tensor::cat(&[&model_input, &model_input], 0)? } else { model_input };
            let eps = self.unet.forward(&model_input, timestep as f64, context)?.to_dtype(DType::F32)?;
            let eps = if guided {
                let (unconditional, conditional) = (eps.get(0)?, eps.get(1)?);
                (&unconditional + ((conditional - &unconditional)? * params.guidance)?)?.unsqueeze(0)?
            } else {
                eps
            };
            let step = scheduler.step(&eps, &latents)?;
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
        let decoded = self.vae.decode(&latents.to_dtype(self.dtype)?)?;
        Ok(vae::to_rgb_images(&decoded)?)
    }
}
