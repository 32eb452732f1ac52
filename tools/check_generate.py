#!/usr/bin/env python3
"""Unseen-model check: run the Rust CLI on a fixture folder and compare with the reference.

    /work/pyref/bin/python tools/make_fixtures.py --variant b --out /tmp/fixture_b
    /work/pyref/bin/python tools/check_generate.py --fixture /tmp/fixture_b --bin target/release/arc2face

For each generation recorded in DIR/reference/params.json (cfg, nocfg: from gen_noise.npy;
seed: --seed 42 without --noise) it runs

    BIN generate --models DIR/models --embedding DIR/reference/id_embedding.npy
        [--noise DIR/reference/gen_noise.npy | --seed S] --num-images 2 --steps N
        --guidance G --size PX --out TMP --latents-out TMP/lat.npy

reads the PNG paths the CLI prints on stdout (one per line, in image order) and compares:
  latents: max|rust - ref| / max|ref| <= 1e-3
  images:  mean |rust - ref| <= 1/255 per image (pixel values in [0, 1])
Prints a table; exit status 1 if any check fails (2 if the CLI itself failed).

Feature cases (written by tools/make_feature_fixtures.py into DIR/reference/features/params.json,
key cli_cases.cases) run the same way plus their own flags, e.g.

    --only fast,lcm2,lora06,control,control_nocfg,control_window,expr1,expr05,expr_control,sampler_euler-a

  fast            --fast --seed 42                       (lcm_lora + lcm + 4 steps + guidance 1.0)
  lcm2            --fast --steps 2 --seed 42
  lora06          --lora reference/features/lora/kohya_diffusers.safetensors:0.6 --seed 42 (4 steps, g 3)
  control*        --pose-image reference/features/control.png --controlnet-scale S
                  [--control-start A --control-end B] --noise gen_noise.npy (control_seed: --seed 42)
  expr*           --expression reference/features/expression.npy --expression-scale S --noise ...
                  (expr_control adds the pose image, scale 1.0)
  sampler_<name>[_<N>][_noise]   --scheduler <name> (dpmpp-2m, dpmpp-2m-karras, euler, euler-a, ddim,
                  lcm) --seed 42, or --noise gen_noise.npy (euler-a / lcm also --seed 42 for the step noise)

Reference Adapter cases (tools/make_reference_fixtures.py, DIR/reference/features/ref/params.json, key
cli_cases.cases), all --noise gen_noise.npy, 5 steps:

  ref             --reference reference/features/ref/reference_image.png --reference-aligned
                  --reference-scale 0.8 (guidance 3)
  ref_expr        the same plus --expression reference/features/expression.npy --expression-scale 1.0
  ref_nocfg       as ref with guidance 1.0

`--only features` runs every feature case (Reference Adapter cases included), `--only ref_all` the
Reference Adapter cases. A case's reference files are the ones its params name.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

LATENT_TOL = 1e-3
IMAGE_TOL = 1.0 / 255.0


def read_png(path):
    try:
        from PIL import Image
    except ImportError:
        sys.exit("PIL is missing: /work/pyref/bin/pip install pillow")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", required=True, help="fixture root (holds models/ and reference/)")
    ap.add_argument("--bin", required=True, help="path to the arc2face binary")
    ap.add_argument("--only", default="cfg,nocfg,seed",
                    help="comma-separated subset of cfg,nocfg,seed and the feature cases ('features': all of them)")
    ap.add_argument("--keep", action="store_true", help="keep the CLI outputs (printed paths)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per CLI run")
    args = ap.parse_args()

    root = os.path.abspath(args.fixture)
    models = os.path.join(root, "models")
    ref = os.path.join(root, "reference")
    with open(os.path.join(ref, "params.json")) as fh:
        params = json.load(fh)
    feature_path = os.path.join(ref, "features", "params.json")
    features = {}
    if os.path.exists(feature_path):
        with open(feature_path) as fh:
            features = json.load(fh).get("cli_cases", {}).get("cases", {})
    ref_path = os.path.join(ref, "features", "ref", "params.json")
    ref_cases = {}
    if os.path.exists(ref_path):
        with open(ref_path) as fh:
            ref_cases = json.load(fh).get("cli_cases", {}).get("cases", {})
    features = {**features, **ref_cases}
    binp = os.path.abspath(args.bin)
    if not os.path.exists(binp):
        sys.exit(f"binary not found: {binp}")

    names = []
    for n in [n.strip() for n in args.only.split(",") if n.strip()]:
        names += list(features) if n == "features" else list(ref_cases) if n == "ref_all" else [n]
    cases = {}
    for name in names:
        if name in params["generations"]:
            g = dict(params["generations"][name])
            g.update(latents=f"gen_{name}_latents.npy", images=f"gen_{name}_images.npy",
                     noise=None if g.get("seed") is not None else "gen_noise.npy", flags=[], omit=[])
        elif name in features:
            g = features[name]
        else:
            known = sorted(params["generations"]) + sorted(features)
            sys.exit(f"unknown case {name!r}" + ("" if features else f" ({feature_path} missing: run "
                     "tools/make_feature_fixtures.py)") + ("" if ref_cases else f" ({ref_path} missing: run "
                     "tools/make_reference_fixtures.py)") + "; known: " + ", ".join(known))
        cases[name] = g

    rows = []
    cli_failed = False
    for name in names:
        g = cases[name]
        tmp = tempfile.mkdtemp(prefix=f"check_{name}_")
        lat_path = os.path.join(tmp, "lat.npy")
        cmd = [binp, "generate", "--models", models,
               "--embedding", os.path.join(ref, "id_embedding.npy")]
        if g.get("noise") is not None:
            cmd += ["--noise", os.path.join(ref, g["noise"].removeprefix("reference/"))]
        if g.get("seed") is not None:
            cmd += ["--seed", str(g["seed"])]
        omit = set(g.get("omit", []))
        cmd += ["--num-images", str(g["num_images"])]
        if "--steps" not in omit:
            cmd += ["--steps", str(g["steps"])]
        if "--guidance" not in omit:
            cmd += ["--guidance", repr(float(g["guidance"]))]
        cmd += ["--size", str(g["size"]), "--out", tmp, "--latents-out", lat_path]
        cmd += [f.replace("{ref}", ref).replace("{models}", models) for f in g.get("flags", [])]
        print("$", " ".join(cmd), flush=True)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"  {name}: timed out after {args.timeout:.0f}s")
            rows.append((name, None, None, None, "CLI TIMEOUT"))
            cli_failed = True
            continue
        if p.returncode != 0:
            print(f"  {name}: exit status {p.returncode}\n  stderr tail:\n" + "\n".join(p.stderr.splitlines()[-20:]))
            rows.append((name, None, None, None, f"CLI EXIT {p.returncode}"))
            cli_failed = True
            continue
        pngs = []
        for line in p.stdout.splitlines():
            line = line.strip()
            if line.lower().endswith(".png"):
                path = line if os.path.isabs(line) else os.path.join(os.getcwd(), line)
                pngs.append(path)
        ref_lat = np.load(os.path.join(ref, g["latents"])).astype(np.float64)
        ref_img = np.load(os.path.join(ref, g["images"]))
        notes = []
        lat_err = None
        if os.path.exists(lat_path):
            lat = np.load(lat_path).astype(np.float64)
            if lat.shape != ref_lat.shape and lat.size == ref_lat.size:
                notes.append(f"latents shape {lat.shape} reshaped")
                lat = lat.reshape(ref_lat.shape)
            if lat.shape != ref_lat.shape:
                notes.append(f"latents shape {lat.shape} != {ref_lat.shape}")
            else:
                lat_err = float(np.abs(lat - ref_lat).max() / np.abs(ref_lat).max())
        else:
            notes.append("no --latents-out file")
        img_maes, img_max = [], 0
        if len(pngs) != ref_img.shape[0]:
            notes.append(f"{len(pngs)} PNG paths on stdout, expected {ref_img.shape[0]}")
        for i, path in enumerate(pngs[: ref_img.shape[0]]):
            if not os.path.exists(path):
                notes.append(f"missing {path}")
                continue
            im = read_png(path)
            if im.shape != ref_img[i].shape:
                notes.append(f"image {i} shape {im.shape} != {ref_img[i].shape}")
                continue
            d = np.abs(im.astype(np.int32) - ref_img[i].astype(np.int32))
            img_maes.append(float(d.mean()) / 255.0)
            img_max = max(img_max, int(d.max()))
        ok = (lat_err is not None and lat_err <= LATENT_TOL and len(img_maes) == ref_img.shape[0]
              and all(m <= IMAGE_TOL for m in img_maes) and not notes)
        rows.append((name, lat_err, img_maes, img_max, ("ok" if ok else "FAIL") + ("; " + "; ".join(notes) if notes else "")))
        if args.keep:
            print(f"  outputs kept in {tmp}")

    print()
    w = max([6] + [len(n) for n in names])
    print(f"{'run':<{w}} {'steps':>5} {'guid':>5} {'seed':>5}  {'latent rel err':>14}  {'image MAE (x255)':>18}  {'max px':>6}  result")
    print(f"{'':<{w}} {'':>5} {'':>5} {'':>5}  {'(tol 1e-3)':>14}  {'(tol 1.0)':>18}  {'':>6}")
    failed = False
    for name, lat_err, maes, mx, res in rows:
        g = cases[name]
        le = "-" if lat_err is None else f"{lat_err:.3e}"
        im = "-" if not maes else ", ".join(f"{m * 255:.3f}" for m in maes)
        mxs = "-" if mx is None else str(mx)
        print(f"{name:<{w}} {g['steps']:>5} {g['guidance']:>5} {str(g.get('seed') or '-'):>5}  {le:>14}  {im:>18}  {mxs:>6}  {res}")
        failed |= not res.startswith("ok")
    if cli_failed:
        sys.exit(2)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
