//! DDIM as diffusers' `DDIMScheduler` from SD1.5's config: "leading" timesteps
//! `(0..N)·⌊T/N⌋` reversed plus `steps_offset` (1), η = 0 (no noise), no clipping, and the last
//! step going to ᾱ_0 (`set_alpha_to_one` false).

use candle_core::{Result, Tensor};

use super::{NoiseSchedule, StepOutput};

pub struct Ddim {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    /// ⌊T/N⌋: how far each step goes back.
    step_ratio: usize,
    step_index: usize,
}

impl Ddim {
    pub fn new(schedule: &NoiseSchedule, num_steps: usize) -> Self {
        let num_steps = num_steps.max(1);
        let step_ratio = schedule.train_timesteps() / num_steps;
        let timesteps = (0..num_steps).rev().map(|i| (i * step_ratio + schedule.steps_offset) as f64).collect();
        Self {
            timesteps,
            alphas_cumprod: schedule.alphas_cumprod.clone(),
            final_alpha_cumprod: schedule.final_alpha_cumprod,
            step_ratio,
            step_index: 0,
        }
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn step(&mut self, eps: &Tensor, sample: &Tensor) -> Result<StepOutput> {
        let Some(&t) = self.timesteps.get(self.step_index) else {
            candle_core::bail!("scheduler stepped past its last timestep");
        };
        let t = t as usize;
        let alpha = self.alphas_cumprod[t];
        let alpha_prev = t.checked_sub(self.step_ratio).map_or(self.final_alpha_cumprod, |prev| self.alphas_cumprod[prev]);
        // x0 = (x − √(1−ᾱ_t)·ε)/√ᾱ_t; x_prev = √ᾱ_prev·x0 + √(1−ᾱ_prev)·ε.
        let predicted_x0 = ((sample - (eps * (1.0 - alpha).sqrt())?)? / alpha.sqrt())?;
        let prev_sample = ((&predicted_x0 * alpha_prev.sqrt())? + (eps * (1.0 - alpha_prev).sqrt())?)?;
        self.step_index += 1;
        Ok(StepOutput { prev_sample, predicted_x0 })
    }
}
