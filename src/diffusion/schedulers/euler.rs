//! Euler and Euler ancestral, as diffusers' `EulerDiscreteScheduler` and
//! `EulerAncestralDiscreteScheduler` from SD1.5's config: float timesteps
//! `linspace(0, T−1, N)` reversed (they reach the UNet fractional), σ interpolated linearly
//! between training timesteps, the model input scaled by `1/√(σ²+1)`, and initial noise scaled
//! by the largest σ.

use candle_core::{Result, Tensor};

use super::{NoiseSchedule, StepOutput, fresh_noise, linspace};
use crate::diffusion::noise::TorchGenerator;

pub struct Euler {
    /// Adds noise at every step (Euler ancestral).
    ancestral: bool,
    timesteps: Vec<f64>,
    /// σ at each timestep, then a final 0.
    sigmas: Vec<f64>,
    step_index: usize,
}

impl Euler {
    pub fn new(schedule: &NoiseSchedule, num_steps: usize, ancestral: bool) -> Self {
        let training_sigmas = schedule.sigmas();
        let last = (training_sigmas.len() - 1) as f64;
        // numpy computes this linspace in float32.
        let timesteps: Vec<f64> = linspace(0.0, last, num_steps.max(1)).iter().rev().map(|&t| t as f32 as f64).collect();
        let sigma_at = |t: f64| {
            let low = (t.floor() as usize).min(training_sigmas.len() - 1);
            let high = (low + 1).min(training_sigmas.len() - 1);
            let w = t - low as f64;
            training_sigmas[low] * (1.0 - w) + training_sigmas[high] * w
        };
        let sigmas = timesteps.iter().map(|&t| sigma_at(t)).chain([0.0]).collect();
        Self { ancestral, timesteps, sigmas, step_index: 0 }
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// With linspace spacing, diffusers scales initial noise by the largest σ itself.
    pub fn init_noise_sigma(&self) -> f64 {
        self.sigmas.iter().copied().fold(0.0, f64::max)
    }

    pub fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        let sigma = self.sigmas[step];
        sample / (sigma * sigma + 1.0).sqrt()
    }

    pub fn step(&mut self, eps: &Tensor, sample: &Tensor, generator: Option<&mut TorchGenerator>) -> Result<StepOutput> {
        let i = self.step_index;
        if i >= self.timesteps.len() {
            candle_core::bail!("scheduler stepped past its last timestep");
        }
        let (sigma, sigma_next) = (self.sigmas[i], self.sigmas[i + 1]);
        // x0 = x − σ·ε; the derivative (x − x0)/σ is ε itself.
        let predicted_x0 = (sample - (eps * sigma)?)?;
        let prev_sample = if self.ancestral {
            let sigma_up = (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma)).sqrt();
            let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up).sqrt();
            let moved = (sample + (eps * (sigma_down - sigma))?)?;
            // Drawn at every step, the last included (where σ_up is 0), as diffusers does.
            (moved + (fresh_noise(generator, eps)? * sigma_up)?)?
        } else {
            (sample + (eps * (sigma_next - sigma))?)?
        };
        self.step_index += 1;
        Ok(StepOutput { prev_sample, predicted_x0 })
    }
}
