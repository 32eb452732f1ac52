//! The samplers. Each is exactly the diffusers scheduler of the same name as diffusers builds it
//! from SD1.5's scheduler config (RECIPE.md, "Samplers"): its timesteps, its scaling of the model
//! input, its update, and (for Euler ancestral and LCM) its fresh noise drawn from the image's own
//! generator. Coefficients are computed in f64 whatever the model dtype; tensors stay f32.

pub mod ddim;
pub mod dpm_solver;
pub mod euler;
pub mod lcm;

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use super::noise::TorchGenerator;

/// The samplers a job can use, by the names other tools give them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum Sampler {
    /// DPM-Solver++ 2M: Arc2Face's own choice.
    #[default]
    #[serde(rename = "dpmpp-2m")]
    #[value(name = "dpmpp-2m")]
    DpmPp2M,
    /// DPM-Solver++ 2M on Karras sigmas.
    #[serde(rename = "dpmpp-2m-karras")]
    #[value(name = "dpmpp-2m-karras")]
    DpmPp2MKarras,
    #[serde(rename = "euler")]
    #[value(name = "euler")]
    Euler,
    /// Euler ancestral: fresh noise at every step.
    #[serde(rename = "euler-a")]
    #[value(name = "euler-a")]
    EulerAncestral,
    #[serde(rename = "ddim")]
    #[value(name = "ddim")]
    Ddim,
    /// Latent consistency: 2 to 8 steps, for a UNet with the LCM-LoRA.
    #[serde(rename = "lcm")]
    #[value(name = "lcm")]
    Lcm,
}

impl Sampler {
    pub const ALL: [Sampler; 6] =
        [Sampler::DpmPp2M, Sampler::DpmPp2MKarras, Sampler::Euler, Sampler::EulerAncestral, Sampler::Ddim, Sampler::Lcm];

    /// The name A1111 and most tools show.
    pub fn label(self) -> &'static str {
        match self {
            Sampler::DpmPp2M => "DPM++ 2M",
            Sampler::DpmPp2MKarras => "DPM++ 2M Karras",
            Sampler::Euler => "Euler",
            Sampler::EulerAncestral => "Euler a",
            Sampler::Ddim => "DDIM",
            Sampler::Lcm => "LCM",
        }
    }

    /// Whether it draws fresh noise while sampling (and so needs a seed even from given latents).
    pub fn draws_noise(self) -> bool {
        matches!(self, Sampler::EulerAncestral | Sampler::Lcm)
    }

    /// The most steps it can take on a schedule of `train_timesteps`.
    pub fn max_steps(self, train_timesteps: usize) -> usize {
        match self {
            Sampler::Lcm => lcm::ORIGINAL_INFERENCE_STEPS.min(train_timesteps),
            _ => train_timesteps,
        }
    }
}

/// The parts of `scheduler/scheduler_config.json` the samplers use. The file is SD1.5's PNDM
/// config; diffusers reads the same fields when it builds any of these schedulers from it.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "default_train_timesteps")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    #[serde(default = "default_beta_schedule")]
    pub beta_schedule: String,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "default_prediction_type")]
    pub prediction_type: String,
    /// DDIM's and LCM's last step goes to ᾱ = 1 when set, else to ᾱ_0 (SD1.5: false).
    #[serde(default)]
    pub set_alpha_to_one: bool,
    /// Added to DDIM's "leading" timesteps (SD1.5: 1).
    #[serde(default)]
    pub steps_offset: usize,
}

fn default_train_timesteps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_beta_schedule() -> String {
    "linear".into()
}
fn default_prediction_type() -> String {
    "epsilon".into()
}

/// The training noise schedule every sampler derives from.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    /// ᾱ_t for every training timestep.
    pub alphas_cumprod: Vec<f64>,
    /// Where DDIM and LCM step to after timestep 0.
    pub final_alpha_cumprod: f64,
    pub steps_offset: usize,
}

impl NoiseSchedule {
    /// The schedule a config describes, or why this app cannot sample with it.
    pub fn from_config(config: &SchedulerConfig) -> std::result::Result<Self, String> {
        if config.prediction_type != "epsilon" {
            return Err(format!("prediction_type {:?} is not supported (Arc2Face predicts epsilon)", config.prediction_type));
        }
        let n = config.num_train_timesteps;
        if n < 2 {
            return Err(format!("num_train_timesteps must be at least 2, got {n}"));
        }
        let betas: Vec<f64> = match (&config.trained_betas, config.beta_schedule.as_str()) {
            (Some(betas), _) if betas.len() == n => betas.clone(),
            (Some(betas), _) => return Err(format!("trained_betas has {} values, expected {n}", betas.len())),
            (None, "scaled_linear") => linspace(config.beta_start.sqrt(), config.beta_end.sqrt(), n).into_iter().map(|b| b * b).collect(),
            (None, "linear") => linspace(config.beta_start, config.beta_end, n),
            (None, other) => return Err(format!("beta_schedule {other:?} is not supported")),
        };
        let mut product = 1.0;
        let alphas_cumprod: Vec<f64> = betas
            .iter()
            .map(|beta| {
                product *= 1.0 - beta;
                product
            })
            .collect();
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(Self { alphas_cumprod, final_alpha_cumprod, steps_offset: config.steps_offset })
    }

    pub fn train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// `σ_t = √((1 − ᾱ_t)/ᾱ_t)` at every training timestep.
    pub fn sigmas(&self) -> Vec<f64> {
        self.alphas_cumprod.iter().map(|ac| ((1.0 - ac) / ac).sqrt()).collect()
    }
}

/// `n` evenly spaced values from `start` to `end`, both included, as numpy computes them.
pub fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n).map(|i| if i == n - 1 { end } else { start + step * i as f64 }).collect()
}

/// What one sampler step produced.
pub struct StepOutput {
    /// The sample for the next timestep (f32).
    pub prev_sample: Tensor,
    /// The sampler's prediction of the clean latents at this step (f32), for previews.
    pub predicted_x0: Tensor,
}

/// One sampler's run over one set of timesteps. It keeps state between steps, so each image
/// gets its own.
pub enum Scheduler {
    DpmSolver(dpm_solver::DpmSolverMultistep),
    Euler(euler::Euler),
    Ddim(ddim::Ddim),
    Lcm(lcm::Lcm),
}

impl Scheduler {
    pub fn new(sampler: Sampler, schedule: &NoiseSchedule, steps: usize) -> Self {
        match sampler {
            Sampler::DpmPp2M => Scheduler::DpmSolver(dpm_solver::DpmSolverMultistep::new(schedule, steps, false)),
            Sampler::DpmPp2MKarras => Scheduler::DpmSolver(dpm_solver::DpmSolverMultistep::new(schedule, steps, true)),
            Sampler::Euler => Scheduler::Euler(euler::Euler::new(schedule, steps, false)),
            Sampler::EulerAncestral => Scheduler::Euler(euler::Euler::new(schedule, steps, true)),
            Sampler::Ddim => Scheduler::Ddim(ddim::Ddim::new(schedule, steps)),
            Sampler::Lcm => Scheduler::Lcm(lcm::Lcm::new(schedule, steps)),
        }
    }

    /// The timesteps the model is evaluated at, in order (Euler's are fractional).
    pub fn timesteps(&self) -> &[f64] {
        match self {
            Scheduler::DpmSolver(s) => s.timesteps(),
            Scheduler::Euler(s) => s.timesteps(),
            Scheduler::Ddim(s) => s.timesteps(),
            Scheduler::Lcm(s) => s.timesteps(),
        }
    }

    /// What initial standard-normal latents are multiplied by.
    pub fn init_noise_sigma(&self) -> f64 {
        match self {
            Scheduler::Euler(s) => s.init_noise_sigma(),
            _ => 1.0,
        }
    }

    /// The model's input at step `step` for `sample`.
    pub fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        match self {
            Scheduler::Euler(s) => s.scale_model_input(sample, step),
            _ => Ok(sample.clone()),
        }
    }

    /// Advances `sample` by one step given the model's noise prediction `eps`; samplers that add
    /// noise draw it from `generator`.
    pub fn step(&mut self, eps: &Tensor, sample: &Tensor, generator: Option<&mut TorchGenerator>) -> Result<StepOutput> {
        let eps = eps.to_dtype(candle_core::DType::F32)?;
        let sample = sample.to_dtype(candle_core::DType::F32)?;
        match self {
            Scheduler::DpmSolver(s) => s.step(&eps, &sample),
            Scheduler::Euler(s) => s.step(&eps, &sample, generator),
            Scheduler::Ddim(s) => s.step(&eps, &sample),
            Scheduler::Lcm(s) => s.step(&eps, &sample, generator),
        }
    }
}

/// The noise a stochastic sampler adds, shaped like `like`.
fn fresh_noise(generator: Option<&mut TorchGenerator>, like: &Tensor) -> Result<Tensor> {
    match generator {
        Some(generator) => generator.randn_tensor(like.shape(), like.device()),
        None => candle_core::bail!("this sampler adds noise at each step and needs a seed for it"),
    }
}
