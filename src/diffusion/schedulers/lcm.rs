//! LCM as diffusers' `LCMScheduler` from SD1.5's config, for a UNet carrying the LCM-LoRA: its
//! timesteps are N of the 50 it was distilled on (`original_inference_steps`), each step predicts
//! x0, applies the boundary-condition scalings (`timestep_scaling` 10, σ_data 0.5) and, except at
//! the last step, adds fresh noise from the image's generator.

use candle_core::{Result, Tensor};

use super::{NoiseSchedule, StepOutput, fresh_noise, linspace};
use crate::diffusion::noise::TorchGenerator;

/// The schedule the LCM was distilled on has this many steps; a run takes N ≤ 50 of them.
pub const ORIGINAL_INFERENCE_STEPS: usize = 50;
const TIMESTEP_SCALING: f64 = 10.0;
const SIGMA_DATA: f64 = 0.5;

pub struct Lcm {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    step_index: usize,
}

impl Lcm {
    pub fn new(schedule: &NoiseSchedule, num_steps: usize) -> Self {
        let train = schedule.train_timesteps();
        let original = ORIGINAL_INFERENCE_STEPS.min(train);
        let k = train / original;
        // The distillation schedule, newest first: 999, 979, …, 19 for SD1.5.
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        let num_steps = num_steps.clamp(1, original);
        let timesteps = linspace(0.0, origin.len() as f64, num_steps + 1)
            .into_iter()
            .take(num_steps)
            .map(|index| origin[index.floor() as usize] as f64)
            .collect();
        Self { timesteps, alphas_cumprod: schedule.alphas_cumprod.clone(), step_index: 0 }
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn step(&mut self, eps: &Tensor, sample: &Tensor, generator: Option<&mut TorchGenerator>) -> Result<StepOutput> {
        let i = self.step_index;
        let Some(&t) = self.timesteps.get(i) else {
            candle_core::bail!("scheduler stepped past its last timestep");
        };
        let last = i + 1 == self.timesteps.len();
        let alpha = self.alphas_cumprod[t as usize];
        // After the last step there is no next timestep (and no noise to scale).
        let alpha_prev = self.timesteps.get(i + 1).map_or(alpha, |&next| self.alphas_cumprod[next as usize]);
        let scaled = t * TIMESTEP_SCALING;
        let c_skip = SIGMA_DATA * SIGMA_DATA / (scaled * scaled + SIGMA_DATA * SIGMA_DATA);
        let c_out = scaled / (scaled * scaled + SIGMA_DATA * SIGMA_DATA).sqrt();
        let predicted_x0 = ((sample - (eps * (1.0 - alpha).sqrt())?)? / alpha.sqrt())?;
        let denoised = ((&predicted_x0 * c_out)? + (sample * c_skip)?)?;
        let prev_sample = if last {
            denoised.clone()
        } else {
            ((&denoised * alpha_prev.sqrt())? + (fresh_noise(generator, eps)? * (1.0 - alpha_prev).sqrt())?)?
        };
        self.step_index += 1;
        Ok(StepOutput { prev_sample, predicted_x0: denoised })
    }
}
