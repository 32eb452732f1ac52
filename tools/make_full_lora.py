#!/usr/bin/env python3
"""A random LoRA for a full-size models folder (tools/make_fixtures.py --full-size), to measure
what the features built on one cost in time and memory: the Reference Adapter (keeping a
photo's look) or the LCM-LoRA (fast mode).

    python3 tools/make_full_lora.py --models /tmp/full/models [--folder ref_adapter|lcm_lora] [--rank 64]

Writes MODELS/FOLDER/pytorch_lora_weights.safetensors in PEFT's layout (`unet.<module>.lora_A
/ lora_B.weight`, alpha = rank) on every attention projection (to_q, to_k, to_v, to_out.0) of the
UNet, with shapes read from the UNet's safetensors header. Needs numpy and safetensors only.
"""
import argparse
import json
import os
import struct

import numpy as np
from safetensors.numpy import save_file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True)
    ap.add_argument("--folder", choices=("ref_adapter", "lcm_lora"), default="ref_adapter")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    unet = os.path.join(args.models, "arc2face", "diffusion_pytorch_model.safetensors")
    with open(unet, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    rng = np.random.default_rng(args.seed)
    tensors = {}
    projections = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")
    for name, info in header.items():
        if ".attn" not in name or not name.endswith(projections):
            continue
        out_dim, in_dim = info["shape"]
        module = name[: -len(".weight")]
        tensors[f"unet.{module}.lora_A.weight"] = (rng.standard_normal((args.rank, in_dim)) / np.sqrt(in_dim)).astype(np.float32)
        tensors[f"unet.{module}.lora_B.weight"] = (rng.standard_normal((out_dim, args.rank)) * 0.02).astype(np.float32)
    out = os.path.join(args.models, args.folder)
    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, "pytorch_lora_weights.safetensors"))
    print(f"{len(tensors) // 2} projections, rank {args.rank}: {out}")


if __name__ == "__main__":
    main()
