//! DPM-Solver++ 2M, as diffusers' `DPMSolverMultistepScheduler` from SD1.5's config:
//! `algorithm_type=dpmsolver++`, `solver_order=2`, `solver_type=midpoint`, linspace timestep
//! spacing, first order at the first and the last step (`final_sigmas_type=zero`), epsilon
//! prediction; optionally on Karras sigmas (`use_karras_sigmas`).

use candle_core::{Result, Tensor};

use super::{NoiseSchedule, StepOutput, linspace};

/// `round(linspace(0, T−1, N+1))` reversed with the last one dropped, rounding half to even as
/// numpy does (with 6 steps, 832.5 → 832).
pub fn linspace_timesteps(num_train_timesteps: usize, num_steps: usize) -> Vec<u32> {
    let last = (num_train_timesteps - 1) as f64;
    let step = last / num_steps as f64;
    (1..=num_steps).rev().map(|i| if i == num_steps { last } else { (i as f64 * step).round_ties_even() } as u32).collect()
}

/// Karras et al.'s sigmas between the schedule's largest and smallest σ (ρ = 7), and the
/// timesteps diffusers gives them: each σ's place on the training schedule, interpolated in
/// log σ and rounded.
fn karras(training_sigmas: &[f64], num_steps: usize) -> (Vec<f64>, Vec<f64>) {
    const RHO: f64 = 7.0;
    let (sigma_min, sigma_max) = (training_sigmas[0], training_sigmas[training_sigmas.len() - 1]);
    let (min_inv_rho, max_inv_rho) = (sigma_min.powf(1.0 / RHO), sigma_max.powf(1.0 / RHO));
    let sigmas: Vec<f64> =
        linspace(0.0, 1.0, num_steps).iter().map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(RHO)).collect();
    let log_sigmas: Vec<f64> = training_sigmas.iter().map(|s| s.ln()).collect();
    let timesteps = sigmas.iter().map(|&sigma| sigma_to_t(sigma, &log_sigmas).round_ties_even()).collect();
    (sigmas, timesteps)
}

/// Where `sigma` falls on the training schedule, as a fractional timestep: linear in log σ
/// between the two neighbouring training timesteps.
fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // The last training timestep whose log σ does not exceed this one, and the next.
    let low = log_sigmas.iter().rposition(|&l| l <= log_sigma).unwrap_or(0).min(log_sigmas.len() - 2);
    let w = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1])).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// A DPM-Solver++ 2M run over one set of timesteps. Holds the previous step's x0 prediction.
pub struct DpmSolverMultistep {
    timesteps: Vec<f64>,
    /// σ at each timestep, then a final 0.
    sigmas: Vec<f64>,
    step_index: usize,
    previous_x0: Option<Tensor>,
}

impl DpmSolverMultistep {
    pub fn new(schedule: &NoiseSchedule, num_steps: usize, karras_sigmas: bool) -> Self {
        let training_sigmas = schedule.sigmas();
        let num_steps = num_steps.max(1);
        let (sigmas, timesteps): (Vec<f64>, Vec<f64>) = if karras_sigmas {
            karras(&training_sigmas, num_steps)
        } else {
            let timesteps = linspace_timesteps(training_sigmas.len(), num_steps);
            (timesteps.iter().map(|&t| training_sigmas[t as usize]).collect(), timesteps.iter().map(|&t| t as f64).collect())
        };
        Self { timesteps, sigmas: sigmas.into_iter().chain([0.0]).collect(), step_index: 0, previous_x0: None }
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Advances `sample` by one step given the model's noise prediction `eps` (both f32).
    pub fn step(&mut self, eps: &Tensor, sample: &Tensor) -> Result<StepOutput> {
        let i = self.step_index;
        if i >= self.timesteps.len() {
            candle_core::bail!("scheduler stepped past its last timestep");
        }
        let now = Sigma::new(self.sigmas[i]);
        let next = Sigma::new(self.sigmas[i + 1]);
        // x0 = (x − s·ε)/α
        let x0 = ((sample - (eps * now.s)?)? / now.alpha)?;
        let h = next.lambda - now.lambda;
        // α_{i+1}(e^{−h} − 1); at the final σ = 0 this is −1 and the step returns x0.
        let x0_coefficient = next.alpha * ((-h).exp() - 1.0);
        let first_order = i == 0 || i == self.timesteps.len() - 1;
        let mut prev_sample = ((sample * (next.s / now.s))? - (&x0 * x0_coefficient)?)?;
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
