#!/usr/bin/env python3
"""Reference-stack benchmark: the same job as `arc2face generate`, with diffusers on CPU (float32).

    /work/pyref/bin/python tools/bench_diffusers.py --models DIR --size 256 --steps 4 \
        --num-images 1 --guidance 3 --out DIR2 --threads 2 [--embedding E.npy] [--seed 1]

DIR is a models folder (RECIPE.md "Models folder"; e.g. made with `make_fixtures.py --full-size --out X`, then
DIR = X/models; X itself is accepted too). Everything counts from process start: imports, loading
the UNet (safetensors), the encoder (torch pickle), the VAE and the scheduler config, encoding the
identity (--embedding, or a random 512-d vector), the
DPM-Solver++ denoising loop (with CFG when guidance > 1), the VAE decode and writing PNGs.
Image i uses torch.Generator("cpu").manual_seed(seed + i), as the Rust CLI does.
Phase timings go to stderr. Meant to run under /usr/bin/time -v for peak RSS (see tools/bench.sh).
"""

import time

T0 = time.time()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--num-images", type=int, default=1)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--embedding", help=".npy identity vector (default: random N(0,1), 512-d or encoder hidden size if smaller)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    phases = []
    last = [T0]

    def mark(name):
        now = time.time()
        phases.append((name, now - last[0]))
        last[0] = now
        print(f"[bench] {name:<22} {phases[-1][1]:8.3f} s   (t = {now - T0:8.3f} s)",
              file=sys.stderr, flush=True)

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import ref_common as rc
    from PIL import Image

    mark("imports")
    models_dir = rc.find_models_dir(args.models)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(os.path.join(models_dir, "arc2face"), torch_dtype=torch.float32).eval()
    mark("load unet")
    try:
        enc = CLIPTextModel.from_pretrained(os.path.join(models_dir, "encoder"), dtype=torch.float32).eval()
    except TypeError:
        enc = CLIPTextModel.from_pretrained(os.path.join(models_dir, "encoder"), torch_dtype=torch.float32).eval()
    mark("load encoder")
    vae = AutoencoderKL.from_pretrained(os.path.join(models_dir, "vae"), torch_dtype=torch.float32).eval()
    mark("load vae")
    import json

    with open(os.path.join(models_dir, "scheduler", "scheduler_config.json")) as fh:
        sched = rc.make_scheduler(json.load(fh))
    pipe = rc.make_pipeline(unet, enc, vae, sched)
    mark("scheduler+pipeline")

    hidden = enc.config.hidden_size
    if args.embedding:
        idv = np.load(args.embedding).astype(np.float32).reshape(-1)
    else:
        idv = torch.randn(min(512, hidden), generator=torch.Generator("cpu").manual_seed(args.seed)).numpy()
    with torch.no_grad():
        cond = rc.encode_identity(enc, idv)
        uncond = rc.encode_uncond(enc)
    mark("encode identity")

    n = args.num_images
    step_times = []
    t_step = [time.time()]

    def cb(p, i, t, kw):
        now = time.time()
        step_times.append(now - t_step[0])
        t_step[0] = now
        return kw

    gens = [torch.Generator("cpu").manual_seed(args.seed + i) for i in range(n)]
    t_step[0] = time.time()
    with torch.no_grad():
        latents = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_images_per_prompt=n,
                       height=args.size, width=args.size, num_inference_steps=args.steps,
                       guidance_scale=args.guidance, generator=gens,
                       output_type="latent", callback_on_step_end=cb).images
    mark(f"denoise ({args.steps} steps)")
    print("[bench]   per step: " + ", ".join(f"{s:.3f}" for s in step_times) + " s", file=sys.stderr)
    _, imgs = rc.decode_images(vae, latents)
    mark("vae decode")
    os.makedirs(args.out, exist_ok=True)
    for i, im in enumerate(imgs):
        path = os.path.join(args.out, f"diffusers_{args.seed + i}.png")
        Image.fromarray(im).save(path)
        print(path)
    mark("write png")
    print(f"[bench] total {time.time() - T0:.3f} s; threads {torch.get_num_threads()}; "
          f"{args.num_images} image(s) {args.size}px, {args.steps} steps, guidance {args.guidance}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
