//! DPM-Solver++ 2M, exactly as diffusers' `DPMSolverMultistepScheduler` builds it from SD1.5's
//! PNDM config (RECIPE.md, "Sampling"): `algorithm_type=dpmsolver++`, `solver_order=2`,
//! `solver_type=midpoint`, linspace timestep spacing, `lower_order_final`, a final sigma of zero
//! and epsilon prediction.
//!
//! The coefficients are computed in f64 whatever the model dtype; the tensors stay f32.

use candle_core::{DType, Result, Tensor};
use serde::Deserialize;

/// The parts of `scheduler/scheduler_config.json` that the sampler uses. The file is SD1.5's
/// PNDM config; diffusers reads the same fields when it builds the DPM-Solver from it.
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

impl SchedulerConfig {
    /// The training noise schedule: `σ_t = √((1 − ᾱ_t)/ᾱ_t)` for every training timestep.
    /// Returns a reason when the config asks for something this sampler does not do.
    pub fn training_sigmas(&self) -> std::result::Result<Vec<f64>, String> {
        if self.prediction_type != "epsilon" {
            return Err(format!("prediction_type {:?} is not supported (Arc2Face predicts epsilon)", self.prediction_type));
        }
        let n = self.num_train_timesteps;
        if n < 2 {
            return Err(format!("num_train_timesteps must be at least 2, got {n}"));
        }
        let betas: Vec<f64> = match (&self.trained_betas, self.beta_schedule.as_str()) {
            (Some(betas), _) if betas.len() == n => betas.clone(),
            (Some(betas), _) => {
                return Err(format!("trained_betas has {} values, expected {n}", betas.len()));
            }
            (None, "scaled_linear") => linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), n).into_iter().map(|b| b * b).collect(),
            (None, "linear") => linspace(self.beta_start, self.beta_end, n),
            (None, other) => return Err(format!("beta_schedule {other:?} is not supported")),
        };
        let mut alpha_cumprod = 1.0;
        Ok(betas
            .iter()
            .map(|beta| {
                alpha_cumprod *= 1.0 - beta;
                ((1.0 - alpha_cumprod) / alpha_cumprod).sqrt()
            })
            .collect())
    }
}

fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    let step = (end - start) / (n - 1) as f64;
    (0..n).map(|i| if i == n - 1 { end } else { start + step * i as f64 }).collect()
}

/// `round(linspace(0, T−1, N+1))` reversed with the last one dropped, rounding half to even as
/// numpy does (with 6 steps, 832.5 → 832).
pub fn linspace_timesteps(num_train_timesteps: usize, num_steps: usize) -> Vec<u32> {
    let last = (num_train_timesteps - 1) as f64;
    let step = last / num_steps as f64;
    (1..=num_steps).rev().map(|i| if i == num_steps { last } else { (i as f64 * step).round_ties_even() } as u32).collect()
}

/// What one solver step produced.
pub struct StepOutput {
    /// The sample for the next timestep (f32).
    pub prev_sample: Tensor,
    /// The model's prediction of the clean latents at this step (f32), for previews.
    pub predicted_x0: Tensor,
}

/// A DPM-Solver++ 2M run over one set of timesteps. Holds the previous step's x0 prediction,
/// so make a new one for each image.
pub struct DpmSolverMultistep {
    timesteps: Vec<u32>,
    /// σ at each timestep, then a final 0.
    sigmas: Vec<f64>,
    step_index: usize,
    previous_x0: Option<Tensor>,
}

impl DpmSolverMultistep {
    pub fn new(training_sigmas: &[f64], num_steps: usize) -> Self {
        let timesteps = linspace_timesteps(training_sigmas.len(), num_steps.max(1));
        let sigmas = timesteps.iter().map(|&t| training_sigmas[t as usize]).chain([0.0]).collect();
        Self { timesteps, sigmas, step_index: 0, previous_x0: None }
    }

    pub fn timesteps(&self) -> &[u32] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Advances `sample` by one step given the model's noise prediction `eps` at the current
    /// timestep.
    pub fn step(&mut self, eps: &Tensor, sample: &Tensor) -> Result<StepOutput> {
        let i = self.step_index;
        if i >= self.timesteps.len() {
            candle_core::bail!("scheduler stepped past its last timestep");
        }
        let eps = eps.to_dtype(DType::F32)?;
        let sample = sample.to_dtype(DType::F32)?;
        let now = Sigma::new(self.sigmas[i]);
        let next = Sigma::new(self.sigmas[i + 1]);
        // x0 = (x − s·ε)/α
        let x0 = ((&sample - (eps * now.s)?)? / now.alpha)?;
        let h = next.lambda - now.lambda;
        // α_{i+1}(e^{−h} − 1); at the final σ = 0 this is −1 and the step returns x0.
        let x0_coefficient = next.alpha * ((-h).exp() - 1.0);
        let first_order = i == 0 || i == self.timesteps.len() - 1;
        let mut prev_sample = ((&sample * (next.s / now.s))? - (&x0 * x0_coefficient)?)?;
        if !first_order {
            let Some(previous_x0) = self.previous_x0.as_ref() else {
                candle_core::bail!("a second-order step needs the previous step's prediction");
            };
            let previous = Sigma::new(self.sigmas[i - 1]);
            let r = (now.lambda - previous.lambda) / h;
            let d1 = ((&x0 - previous_x0)? / r)?;
            prev_sample = (prev_sample - (d1 * (0.5 * x0_coefficient))?)?;
        }
        self.previous_x0 = Some(x0.clone());
        self.step_index += 1;
        Ok(StepOutput { prev_sample, predicted_x0: x0 })
    }
}

/// σ with the quantities the solver derives from it: α = 1/√(σ²+1), s = σ·α, λ = ln α − ln s.
struct Sigma {
    alpha: f64,
    s: f64,
    lambda: f64,
}

impl Sigma {
    fn new(sigma: f64) -> Self {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        let s = sigma * alpha;
        Self { alpha, s, lambda: alpha.ln() - s.ln() }
    }
}
