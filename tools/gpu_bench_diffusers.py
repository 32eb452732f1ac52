#!/usr/bin/env python3
"""diffusers' side of tools/gpu_bench.sh: the same job as `arc2face generate` on CUDA in fp16 with
PyTorch's scaled-dot-product attention (diffusers' default), 4 images × 25 steps × 512², guidance 3,
DPM++ 2M, per-image CPU generators seeded seed + i. Prints, like our CLI, "first step after X s"
(from process start) and "N steps at R it/s (denoising alone)" to stderr, and saves the final
latents for the f16 comparison.

    python tools/gpu_bench_diffusers.py --models DIR --embedding id.npy --out DIR2 --latents-out L.npy
"""

import time

T0 = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True)
    ap.add_argument("--embedding", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--latents-out", required=True)
    ap.add_argument("--num-images", type=int, default=4)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    import numpy as np
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    import ref_common as rc

    device, dtype = "cuda", torch.float16
    models = rc.find_models_dir(args.models)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(models, "arc2face"), torch_dtype=dtype).to(device).eval()
    encoder = CLIPTextModel.from_pretrained(os.path.join(models, "encoder"), torch_dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(models, "vae"), torch_dtype=dtype).to(device).eval()
    with open(os.path.join(models, "scheduler", "scheduler_config.json")) as fh:
        scheduler = rc.make_scheduler(json.load(fh))
    # The identity is encoded once, on the CPU in f32 (as our engine keeps it); the pipeline
    # gets the embeddings.
    identity = np.load(args.embedding).astype(np.float32).reshape(-1)
    with torch.no_grad():
        cond = rc.encode_identity(encoder, identity).to(device, dtype)
        uncond = rc.encode_uncond(encoder).to(device, dtype)
    pipe = rc.make_pipeline(unet, encoder.to(device, dtype), vae, scheduler)
    print(f"loaded in {time.time() - T0:.1f}s", file=sys.stderr)

    steps = []
    def on_step(pipe_, i, t, kwargs):
        torch.cuda.synchronize()
        steps.append(time.time())
        return kwargs

    generators = [torch.Generator("cpu").manual_seed(args.seed + i) for i in range(args.num_images)]
    torch.cuda.synchronize()
    started = time.time()
    with torch.no_grad():
        latents = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_images_per_prompt=args.num_images,
                       height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=args.guidance,
                       generator=generators, output_type="latent", callback_on_step_end=on_step).images
        images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    torch.cuda.synchronize()
    # diffusers denoises the 4 images as one batch: steps × images over the denoising time.
    rate = args.steps * args.num_images / (steps[-1] - started)
    print(f"first step after {steps[0] - T0:.3f}s; {args.steps * args.num_images} steps at {rate:.2f} it/s (denoising alone)",
          file=sys.stderr)
    print(f"first image after {time.time() - T0:.3f}s", file=sys.stderr)
    np.save(args.latents_out, latents.float().cpu().numpy())
    os.makedirs(args.out, exist_ok=True)
    print(f"{len(images)} images decoded", file=sys.stderr)


if __name__ == "__main__":
    main()
