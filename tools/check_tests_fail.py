#!/usr/bin/env python3
"""Mutation check for the parity tests: breaks one piece of the pipeline at a time the way a
plausible bug would, runs the test that guards it, and reports whether the test caught it.
Restores every file afterwards. Run from the repository root: python3 tools/check_tests_fail.py
"""
import subprocess, sys
muts = [
 ("src/diffusion/attention.rs", "projected[1].gelu_erf()", "projected[1].gelu()", "unet_forward"),
 ("src/diffusion/scheduler.rs", "(i as f64 * step).round_ties_even()", "(i as f64 * step).round()", "scheduler_timesteps"),
 ("src/diffusion/id_encoder.rs", ".map(|v| v / norm).collect();", ".map(|v| v / 1.0).collect();", "id_encoder"),
 ("src/diffusion/noise.rs", "        tail.iter_mut().for_each(|v| *v = uniform());\n", "", "seeded_noise"),
 ("src/engine/mod.rs", "Tensor::cat(&[&self.unconditional, &conditional], 0)?", "Tensor::cat(&[&conditional, &self.unconditional], 0)?", "generation_with_guidance"),
 ("src/diffusion/scheduler.rs", "let first_order = i == 0 || i == self.timesteps.len() - 1;", "let first_order = i == 0;", "scheduler_steps"),
 ("src/diffusion/vae.rs", "self.model.decode(&(latents / self.scaling_factor)?)", "self.model.decode(&(latents / 0.18215)?)", "vae_decode"),
 ("src/diffusion/unet.rs", ".to_dtype(dtype)?;\n        let emb = self.time_embedding", ".to_dtype(dtype)?;\n        let emb = (emb * 1.0001)?;\n        let emb = self.time_embedding", "unet_forward"),
]
for path, old, new, flt in muts:
    src = open(path).read()
    assert src.count(old) == 1, (path, old)
    open(path, "w").write(src.replace(old, new))
    try:
        r = subprocess.run(["cargo", "test", "-q", "--test", "parity", flt], capture_output=True, text=True)
        out = r.stdout + r.stderr
        line = [l for l in out.splitlines() if "relative max error" in l or "left:" in l or "timesteps for" in l]
        print(("CAUGHT " if r.returncode != 0 else "MISSED ") + f"{path}: {new.strip()[:50]!r} -> {flt}: {line[:1]}", flush=True)
    finally:
        open(path, "w").write(src)
