#!/usr/bin/env python3
"""Reference models and outputs for the features after plain generation (samplers, LoRA, LCM fast
mode, pose ControlNet, Expression Adapter), computed with diffusers on CPU in float32.

    /work/pyref/bin/python tools/make_feature_fixtures.py --fixture tests/fixtures/tiny
    /work/pyref/bin/python tools/make_fixtures.py --variant b --out /tmp/fixture_b
    /work/pyref/bin/python tools/make_feature_fixtures.py --fixture /tmp/fixture_b

DIR (--fixture) is a fixture root written by tools/make_fixtures.py. This tool loads its models
(ref_common.load_models) and never changes a file make_fixtures.py wrote (checked by hash at the
end). It writes only:

    DIR/models/lcm_lora/pytorch_lora_weights.safetensors   LCM-LoRA (kohya keys, diffusers names)
    DIR/models/controlnet/{config.json, diffusion_pytorch_model.safetensors}
    DIR/models/exp_adapter/exp_adapter.bin                  IP-Adapter-style torch pickle
    DIR/reference/features/...                              npy references, LoRA files, control image
    DIR/reference/features/params.json                      every case, precisely

and removes those paths first when they exist (a rerun rewrites them). Every case is described in
params.json with its inputs, settings, files, shapes, the diffusers call that produced it and an
independent check (float64 re-implementations of the samplers, float64 models, own LoRA fusion,
own decoupled cross-attention) with its agreement. Everything is deterministic (fixed seeds).
"""

import argparse
import contextlib
import copy
import hashlib
import inspect
import io
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (init_weights, rel_err)
import ref_common as rc  # noqa: E402

rel_err = mf.rel_err

SAMPLER_NAMES = ["dpmpp-2m", "dpmpp-2m-karras", "euler", "euler-a", "ddim", "lcm"]
SAMPLER_BUILD = {
    "dpmpp-2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp-2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
STOCHASTIC = ("euler-a", "lcm")
SEED = 42  # per-image generators manual_seed(SEED + i)
TRACE_SEED = 7
LORA_RANK, LORA_ALPHA = 4, 2.0
LCM_LORA_RANK, LCM_LORA_ALPHA = 4, 8.0
SECOND_LORA_RANK = 2
LORA_TARGET_CHANGE = 0.15  # relative change (std of difference / std) of a UNet call at user scale 0.6
LCM_LORA_TARGET_CHANGE = 0.20  # at scale 1.0
CONTROL_TARGET_CHANGE = 0.25
EXPR_TARGET_CHANGE = 0.25
EXPR_DIM = 55
EXPR_TOKENS = 4


def log(*a):
    print(*a, flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root, skip):
    out = {}
    for dp, _, fns in os.walk(root):
        for fn in fns:
            p = os.path.join(dp, fn)
            if any(os.path.commonpath([p, s]) == s for s in skip):
                continue
            out[os.path.relpath(p, root)] = sha256(p)
    return out


@contextlib.contextmanager
def quiet():
    """Silence the error diffusers logs (and peft prints) for a load that is expected to fail."""
    import diffusers

    level = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity(50)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        diffusers.utils.logging.set_verbosity(level)


def describe_error(e):
    """'Type: message' with any {'a', 'b'} set in the message sorted and shortened (deterministic)."""
    import re

    msg = str(e).strip()
    m = re.search(r"\{('.*')\}", msg)
    if m:
        items = sorted(re.findall(r"'([^']*)'", m.group(1)))
        short = ", ".join(items[:4]) + (f", ... ({len(items)} in all)" if len(items) > 4 else "")
        msg = msg[: m.start()] + "{" + short + "}" + msg[m.end():]
    return f"{type(e).__name__}: {msg}"


def gens(seed=SEED, n=2):
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


def std_change(a, b):
    """std(a - b) / std(b): the relative change used to size random weights."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float((a - b).std() / b.std())


def make_sampler(name, config):
    import diffusers

    cls, kw = SAMPLER_BUILD[name]
    return getattr(diffusers, cls).from_config(dict(config), **kw)


# ============================================================================ float64 samplers


def f64_schedule():
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas)
    return ac, np.sqrt((1.0 - ac) / ac)


class F64Sampler:
    """Independent float64 re-implementation of each sampler (formulas in params.json)."""

    def __init__(self, name, n):
        ac, sig_all = f64_schedule()
        self.name, self.n, self.ac = name, n, ac
        self.init_noise_sigma = 1.0
        sig = None
        if name == "dpmpp-2m":
            ts = np.round(np.linspace(0, 999, n + 1))[::-1][:-1].astype(np.int64)
            sig = sig_all[ts]
        elif name == "dpmpp-2m-karras":
            smin, smax = sig_all[0], sig_all[-1]
            ramp = np.linspace(0, 1, n)
            sig = (smax ** (1 / 7) + ramp * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7
            ts = np.round(np.interp(np.log(sig), np.log(sig_all), np.arange(1000.0))).astype(np.int64)
        elif name in ("euler", "euler-a"):
            ts = np.linspace(0, 999, n)[::-1].copy()
            sig = np.interp(ts, np.arange(1000.0), sig_all)
            self.init_noise_sigma = float(sig.max())
        elif name == "ddim":
            ts = (np.arange(n) * (1000 // n))[::-1].astype(np.int64) + 1
        elif name == "lcm":
            origin = (np.arange(1, 51) * 20 - 1)[::-1]
            ts = origin[np.floor(np.linspace(0, 50, n, endpoint=False)).astype(np.int64)]
        self.timesteps = ts
        self.sigmas = None if sig is None else np.append(sig, 0.0)
        self.prev_x0 = None

    def t_model(self, i):
        t = self.timesteps[i]
        return float(t) if self.name in ("euler", "euler-a") else int(t)

    def scale(self, x, i):
        if self.name in ("euler", "euler-a"):
            return x / math.sqrt(self.sigmas[i] ** 2 + 1.0)
        return x

    def needs_noise(self, i):
        return self.name == "euler-a" or (self.name == "lcm" and i < self.n - 1)

    def step(self, eps, i, x, noise=None):
        nm, ac = self.name, self.ac
        if nm.startswith("dpmpp"):
            sig = self.sigmas
            alpha = 1.0 / np.sqrt(sig ** 2 + 1.0)
            s = sig * alpha
            with np.errstate(divide="ignore"):
                lam = np.log(alpha) - np.log(s)
            x0 = (x - s[i] * eps) / alpha[i]
            h = lam[i + 1] - lam[i]
            em1 = math.exp(-h) - 1.0
            ratio = s[i + 1] / s[i]
            if i == 0 or i == self.n - 1:
                xn = ratio * x - alpha[i + 1] * em1 * x0
            else:
                r = (lam[i] - lam[i - 1]) / h
                d1 = (x0 - self.prev_x0) / r
                xn = ratio * x - alpha[i + 1] * em1 * x0 - 0.5 * alpha[i + 1] * em1 * d1
            self.prev_x0 = x0
            return xn, x0
        if nm == "euler":
            sg, sn = self.sigmas[i], self.sigmas[i + 1]
            x0 = x - sg * eps
            return x + (x - x0) / sg * (sn - sg), x0
        if nm == "euler-a":
            sg, sn = self.sigmas[i], self.sigmas[i + 1]
            x0 = x - sg * eps
            up = math.sqrt(sn ** 2 * (sg ** 2 - sn ** 2) / sg ** 2)
            down = math.sqrt(sn ** 2 - up ** 2)
            return x + (x - x0) / sg * (down - sg) + noise * up, x0
        t = int(self.timesteps[i])
        at = ac[t]
        x0 = (x - math.sqrt(1 - at) * eps) / math.sqrt(at)
        if nm == "ddim":
            pt = t - 1000 // self.n
            ap = ac[pt] if pt >= 0 else ac[0]
            return math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps, x0
        if nm == "lcm":
            st = t * 10.0
            c_skip = 0.25 / (st ** 2 + 0.25)
            c_out = st / math.sqrt(st ** 2 + 0.25)
            den = c_out * x0 + c_skip * x
            if i < self.n - 1:
                ap = ac[int(self.timesteps[i + 1])]
                return math.sqrt(ap) * den + math.sqrt(1 - ap) * noise, den
            return den, den
        raise ValueError(nm)


def manual_loop(sampler_name, steps, guidance, x_init, generators, eps_fn):
    """float64 generation loop mirroring StableDiffusionPipeline (CFG batch [uncond, cond])."""
    S = F64Sampler(sampler_name, steps)
    x = x_init.double() * S.init_noise_sigma
    for i in range(steps):
        xin = S.scale(x, i)
        t = S.t_model(i)
        if guidance > 1:
            e = eps_fn(torch.cat([xin, xin]), t, i, True)
            eu, ec = e.chunk(2)
            eps = eu + guidance * (ec - eu)
        else:
            eps = eps_fn(xin, t, i, False)
        noise = None
        if S.needs_noise(i):
            noise = torch.cat([torch.randn((1,) + tuple(x.shape[1:]), generator=g) for g in generators]).double()
        x, _ = S.step(eps, i, x, noise)
    return x


# ============================================================================ LoRA helpers

LORA_SUFFIXES = (".to_q", ".to_k", ".to_v", ".to_out.0", ".ff.net.0.proj", ".ff.net.2", ".proj_in", ".proj_out",
                 ".conv1", ".conv2", ".time_emb_proj", ".conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv")


def lora_targets(unet):
    out = []
    for name, m in unet.named_modules():
        if not name.startswith(("down_blocks.", "mid_block.", "up_blocks.")):
            continue
        if isinstance(m, (nn.Linear, nn.Conv2d)) and name.endswith(LORA_SUFFIXES):
            out.append((name, m))
    return out


def random_lora(unet, rank, seed, up_gain, only=None):
    """{path: (down, up)} float32; down ~ N(0, 1/fan_in), up ~ N(0, up_gain^2 / rank)."""
    g = torch.Generator("cpu").manual_seed(seed)
    lora = {}
    for name, m in lora_targets(unet):
        if only is not None and not only(name):
            continue
        w = m.weight
        if isinstance(m, nn.Conv2d):
            down = torch.randn((rank, w.shape[1], w.shape[2], w.shape[3]), generator=g) * (w[0].numel() ** -0.5)
            up = torch.randn((w.shape[0], rank, 1, 1), generator=g) * (up_gain / math.sqrt(rank))
        else:
            down = torch.randn((rank, w.shape[1]), generator=g) * (w.shape[1] ** -0.5)
            up = torch.randn((w.shape[0], rank), generator=g) * (up_gain / math.sqrt(rank))
        lora[name] = (down.contiguous(), up.contiguous())
    return lora


def lora_delta(down, up):
    """Full-weight delta of up∘down (no scale), in the dtype of the inputs."""
    if down.ndim == 4:
        return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
    return up @ down


def fused_copy(unet, loras, dtype=torch.float64):
    """A copy of unet with W + sum(scale * delta) applied by hand; loras = [(lora, scale_total)]."""
    u = copy.deepcopy(unet).to(dtype)
    mods = dict(u.named_modules())
    with torch.no_grad():
        for lora, s in loras:
            for name, (down, up) in lora.items():
                mods[name].weight += s * lora_delta(down.to(dtype), up.to(dtype))
    return u.eval()


def kohya_name(path):
    return "lora_unet_" + path.replace(".", "_")


def sd_block_name(path, cfg):
    """diffusers module path -> original Stable Diffusion (LDM) name as kohya writes it."""
    L = cfg.layers_per_block
    p = path.split(".")
    res_map = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
               "conv_shortcut": "skip_connection"}
    if p[0] == "down_blocks":
        b, kind, j, rest = int(p[1]), p[2], int(p[3]), p[4:]
        if kind == "downsamplers":
            prefix, rest = f"input_blocks_{(b + 1) * (L + 1)}_0", ["op"]
        else:
            prefix = f"input_blocks_{1 + b * (L + 1) + j}_{0 if kind == 'resnets' else 1}"
    elif p[0] == "mid_block":
        kind, j, rest = p[1], int(p[2]), p[3:]
        prefix = f"middle_block_{1 if kind == 'attentions' else (0 if j == 0 else 2)}"
    elif p[0] == "up_blocks":
        b, kind, j, rest = int(p[1]), p[2], int(p[3]), p[4:]
        if kind == "upsamplers":
            has_attn = cfg.up_block_types[b].startswith("CrossAttn")
            prefix, rest = f"output_blocks_{b * (L + 1) + L}_{2 if has_attn else 1}", ["conv"]
        else:
            prefix = f"output_blocks_{b * (L + 1) + j}_{0 if kind == 'resnets' else 1}"
    else:
        raise ValueError(path)
    if kind == "resnets":
        rest = [res_map[rest[0]]] + rest[1:]
    return "lora_unet_" + prefix + "_" + "_".join(rest)


def save_st(path, tensors, metadata=None):
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)


def kohya_dict(lora, alpha, namer, dtype=torch.float32):
    sd = {}
    for path, (down, up) in lora.items():
        n = namer(path)
        sd[n + ".lora_down.weight"] = down.to(dtype)
        sd[n + ".lora_up.weight"] = up.to(dtype)
        sd[n + ".alpha"] = torch.tensor(alpha, dtype=dtype)
    return sd


# ============================================================================ main


class Ctx:
    pass


def load_context(root, out_dir):
    """What every generator here starts from: the fixture's models and references, checked bit for
    bit against what make_fixtures.py recorded (the encoder's outputs, the UNet at t = 500), and
    C.save, which writes an array into out_dir and records it in C.files. Returns (C, the
    fixture's params.json)."""
    import diffusers
    import peft
    import transformers

    models_dir = os.path.join(root, "models")
    ref_dir = os.path.join(root, "reference")
    base = json.load(open(os.path.join(ref_dir, "params.json")))
    C = Ctx()
    C.root, C.models_dir, C.ref_dir, C.feat = root, models_dir, ref_dir, out_dir
    C.unet, C.enc, C.vae, _ = rc.load_models(models_dir)
    C.sched_config = json.load(open(os.path.join(models_dir, "scheduler", "scheduler_config.json")))
    C.size = base["models"]["default_image_size"]
    C.sf = base["models"]["vae"]["scale_factor"]
    C.lat = C.size // C.sf
    C.id_vec = np.load(os.path.join(ref_dir, "id_embedding.npy"))
    C.cond = rc.encode_identity(C.enc, C.id_vec)
    C.uncond = rc.encode_uncond(C.enc)
    assert np.array_equal(C.cond.numpy(), np.load(os.path.join(ref_dir, "encoder_cond.npy")))
    assert np.array_equal(C.uncond.numpy(), np.load(os.path.join(ref_dir, "encoder_uncond.npy")))
    C.cond64, C.uncond64 = C.cond.double(), C.uncond.double()
    C.gen_noise = np.load(os.path.join(ref_dir, "gen_noise.npy"))
    C.unet_sample = torch.from_numpy(np.load(os.path.join(ref_dir, "unet_sample.npy")))
    C.unet_ehs = torch.from_numpy(np.load(os.path.join(ref_dir, "unet_encoder_hidden_states.npy")))
    with torch.no_grad():
        o = C.unet(C.unet_sample, torch.tensor(500), encoder_hidden_states=C.unet_ehs).sample.numpy()
    assert np.array_equal(o, np.load(os.path.join(ref_dir, "unet_out_t500.npy"))), "fixture UNet output changed"
    C.base_out500 = o
    C.files = {}
    log(f"fixture {root}: variant {base['variant']}, image {C.size} px, latents {C.lat}; torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")

    def save(name, arr, dtype=np.float32):
        arr = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
        arr = np.ascontiguousarray(arr.astype(dtype, copy=False))
        np.save(os.path.join(out_dir, name + ".npy"), arr)
        C.files[name + ".npy"] = dict(shape=list(arr.shape), dtype=str(arr.dtype))
        return arr

    C.save = save
    return C, base


def finite_json(value):
    """JSON has no infinities: diffusers' configs hold some (lambda_min_clipped = -inf); write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", required=True, help="fixture root written by tools/make_fixtures.py")
    ap.add_argument("--only", default="samplers,lora,fast,control,expr",
                    help="sections to run (development; a full run writes the complete params.json)")
    args = ap.parse_args()
    sections = set(s.strip() for s in args.only.split(",") if s.strip())

    t_start = time.time()
    torch.set_num_threads(2)
    import diffusers
    import peft
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    import warnings

    warnings.filterwarnings("ignore")
    root = os.path.abspath(args.fixture)
    models_dir = os.path.join(root, "models")
    ref_dir = os.path.join(root, "reference")
    feat = os.path.join(ref_dir, "features")
    ours = [feat] + [os.path.join(models_dir, d) for d in ("lcm_lora", "controlnet", "exp_adapter")]
    if not os.path.isfile(os.path.join(ref_dir, "params.json")):
        sys.exit(f"{root}: not a fixture root (no reference/params.json); run tools/make_fixtures.py first")
    before = snapshot(root, ours)
    for p in ours:
        if os.path.isdir(p):
            shutil.rmtree(p)
    os.makedirs(feat)

    C, base = load_context(root, feat)
    C.trace_x = np.load(os.path.join(ref_dir, "scheduler_trace_x.npy"))
    C.unet64 = copy.deepcopy(C.unet).double().eval()

    P = dict(
        generated_by="tools/make_feature_fixtures.py --fixture DIR",
        versions=dict(torch=torch.__version__, diffusers=diffusers.__version__, transformers=transformers.__version__,
                      peft=peft.__version__, numpy=np.__version__),
        fixture_variant=base["variant"],
        common=dict(
            paths="file names are relative to DIR/reference/features unless they start with models/ (DIR/models) "
                  "or reference/ (DIR/reference)",
            num_images=2, image_size=C.size, latent_size=C.lat, vae_scale_factor=C.sf,
            prompt_embeds="rc.encode_identity(encoder, reference/id_embedding.npy) = reference/encoder_cond.npy",
            negative_prompt_embeds="rc.encode_uncond(encoder) = reference/encoder_uncond.npy",
            pipeline_call="pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_images_per_prompt=2, "
                          "height=size, width=size, num_inference_steps=N, guidance_scale=G, generator=GENS, "
                          "[latents=torch.from_numpy(reference/gen_noise.npy)], output_type='latent', ...)",
            generators="GENS = [torch.Generator('cpu').manual_seed(42 + i) for i in range(2)], passed in every "
                       "generation, also when latents are given (then they only feed the per-step noise of "
                       "euler-a / lcm; the deterministic samplers never draw from them)",
            given_latents="latents given (reference/gen_noise.npy): diffusers multiplies them by "
                          "scheduler.init_noise_sigma (prepare_latents) before the first step",
            cfg="guidance > 1: one UNet call on batch [x, x] with encoder states [uncond, uncond, cond, cond]; "
                "eps = eps_u + G * (eps_c - eps_u); guidance <= 1: one call on x with [cond, cond] only",
            latents_files="*_latents.npy: the final latents (output_type='latent'), float32 (2, 4, L, L)",
            images_files="*_images.npy: uint8 NHWC of rc.decode_images(vae, latents): "
                         "round(clamp(vae.decode(latents / scaling_factor) / 2 + 0.5, 0, 1) * 255)",
            relative_error="max|a - b| / max|b|",
            change="'change' values are std(a - b) / std(b) of an output with and without the feature",
        ),
    )

    if "samplers" in sections:
        P["samplers"] = section_samplers(C)
    if "lora" in sections:
        P["lora"] = section_lora(C)
    if "fast" in sections:
        P["fast"] = section_fast(C)
    if "control" in sections or "expr" in sections:
        P["controlnet"] = section_control(C)
    if "expr" in sections:
        P["expression"] = section_expression(C)
    P["cli_cases"] = cli_cases(C, P)
    P["files"] = dict(sorted(C.files.items()))

    with open(os.path.join(feat, "params.json"), "w") as fh:
        json.dump(finite_json(P), fh, indent=1, allow_nan=False)
        fh.write("\n")

    after = snapshot(root, ours)
    assert after == before, "an existing fixture file changed: " + str(
        sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)))
    total = 0
    rows = []
    for p in ours:
        for dp, _, fns in os.walk(p):
            for fn in fns:
                s = os.path.getsize(os.path.join(dp, fn))
                total += s
                rows.append((s, os.path.relpath(os.path.join(dp, fn), root)))
    rows.sort(reverse=True)
    log(f"existing fixture files unchanged ({len(before)} checked by sha256)")
    log(f"written: {total / 1e6:.2f} MB in {len(rows)} files; largest: " +
        ", ".join(f"{n} {s / 1e3:.0f} kB" for s, n in rows[:6]))
    log(f"done in {time.time() - t_start:.1f}s")


# ============================================================================ generation helpers


def run_pipe(C, pipe, steps, guidance, latents=None, seed=SEED, extra=None, check_np=True):
    """One generation; returns (latents float32 np, images uint8 NHWC, timesteps seen, raw decode)."""
    seen = []

    def cb(p, i, t, kw):
        seen.append(float(t))
        return kw

    def kwargs():
        kw = dict(prompt_embeds=C.cond, negative_prompt_embeds=C.uncond, num_images_per_prompt=2,
                  height=C.size, width=C.size, num_inference_steps=steps, guidance_scale=guidance,
                  generator=gens(seed))
        if latents is not None:
            kw["latents"] = torch.from_numpy(latents.copy())
        kw.update(extra or {})
        return kw

    with torch.no_grad():
        lat = pipe(output_type="latent", callback_on_step_end=cb, **kwargs()).images
        raw, imgs = rc.decode_images(C.vae, lat)
        if check_np:
            res_np = pipe(output_type="np", **kwargs()).images
            np_imgs = (res_np * 255).round().astype(np.uint8)
            assert np.abs(np_imgs.astype(int) - imgs.astype(int)).max() <= 1
    return lat.numpy(), imgs, seen, raw


def x_init(C, latents, seed=SEED):
    """Initial (unscaled) latents and the generators that continue to the step noise."""
    g = gens(seed)
    if latents is not None:
        return torch.from_numpy(latents.copy()).double(), g
    x0 = torch.cat([torch.randn((1, 4, C.lat, C.lat), generator=gi) for gi in g])
    return x0.double(), g


def unet_eps_fn(C, unet64, extra_fn=None):
    """eps_fn for manual_loop with a float64 UNet; extra_fn(x, t, i, cfg) -> dict of UNet kwargs."""

    def f(x, t, i, cfg):
        ehs = torch.cat([C.uncond64, C.uncond64, C.cond64, C.cond64]) if cfg else torch.cat([C.cond64, C.cond64])
        kw = extra_fn(x, t, i, cfg) if extra_fn else {}
        with torch.no_grad():
            return unet64(x, torch.tensor(t), encoder_hidden_states=ehs, **kw).sample

    return f


def gen_entry(C, name, lat, imgs, raw, seen, steps, guidance, latents_given, sampler, err64, **more):
    C.save(f"gen_{name}_latents", lat)
    C.save(f"gen_{name}_images", imgs, np.uint8)
    clamped = float(((raw < -1) | (raw > 1)).float().mean())
    e = dict(latents=f"gen_{name}_latents.npy", images=f"gen_{name}_images.npy", sampler=sampler, steps=steps,
             guidance=guidance, noise="reference/gen_noise.npy" if latents_given else None,
             seed=SEED, timesteps=[int(t) if float(t).is_integer() else t for t in seen],
             rel_err_vs_f64=err64, clamped_fraction=round(clamped, 4),
             latents_std=round(float(lat.std()), 4))
    e.update(more)
    log(f"  gen {name}: {sampler} {steps} steps g {guidance} {'noise' if latents_given else 'seed'}; "
        f"timesteps {e['timesteps']}; std {lat.std():.3f}; clamped {clamped:.1%}; rel err vs f64 {err64:.2e}"
        + (f"; {more}" if more else ""))
    return e


# ============================================================================ 1. samplers


def section_samplers(C):
    log("== samplers")
    cfg = C.sched_config
    out = dict(
        built_as={n: f"{SAMPLER_BUILD[n][0]}.from_config(models/scheduler/scheduler_config.json"
                     + "".join(f", {k}={v}" for k, v in SAMPLER_BUILD[n][1].items()) + ")" for n in SAMPLER_NAMES},
        resolved_config={},
        schedules={},
        trace=dict(
            input="reference/scheduler_trace_x.npy (float32 (1,4,4,4))",
            recipe="g = torch.Generator('cpu').manual_seed(7) once; x = trace_x; for t in scheduler.timesteps: "
                   "x_in = scheduler.scale_model_input(x, t); eps = sin(x_in) * 0.5 + float(t) / 1000 "
                   "(float32 tensor ops; the scalar float(t)/1000 is computed in float64 and added in float32); "
                   "x = scheduler.step(eps, t, x, generator=g).prev_sample (generator passed to every step of "
                   "every sampler whose step() takes one; only euler-a (every step) and lcm (every step but "
                   "the last) draw from it: torch.randn(x.shape, generator=g) float32)",
            files="sampler_<name>_<N>_trace.npy (float32 (1,4,4,4)); lcm also sampler_lcm_8_denoised.npy "
                  "(float32 (8,1,4,4,4)): step() output 'denoised' of each step of the N=8 trace",
            rel_err_vs_f64={},
        ),
        generations={},
    )
    for name in SAMPLER_NAMES:
        s = make_sampler(name, cfg)
        out["resolved_config"][name] = {k: (v if not isinstance(v, np.ndarray) else v.tolist())
                                        for k, v in dict(s.config).items() if not k.startswith("_")}
        out["schedules"][name] = {}
        for n in (1, 2, 4, 8, 25):
            s = make_sampler(name, cfg)
            s.set_timesteps(n)
            ts = C.save(f"sampler_{name}_{n}_timesteps", s.timesteps.double(), np.float64)
            ent = dict(timesteps=[float(t) if not float(t).is_integer() else int(t) for t in ts],
                       timesteps_dtype=str(s.timesteps.dtype).replace("torch.", ""),
                       init_noise_sigma=float(s.init_noise_sigma))
            F = F64Sampler(name, n)
            if name in ("euler", "euler-a"):
                ent["timesteps_rel_err_vs_f64"] = rel_err(ts, F.timesteps)
            else:
                assert np.array_equal(ts, F.timesteps), (name, n, ts, F.timesteps)
            # float32 alphas_cumprod: 1 - ac[0] loses ~1e-4 relative (sigma(0) is the euler N = 1 case)
            assert abs(ent["init_noise_sigma"] - F.init_noise_sigma) <= 1e-3 * F.init_noise_sigma, (name, n)
            if getattr(s, "sigmas", None) is not None and name != "lcm" and name != "ddim":
                sg = C.save(f"sampler_{name}_{n}_sigmas", s.sigmas.double(), np.float64)
                ent["sigmas"] = sg.tolist()
                ent["sigmas_dtype"] = str(s.sigmas.dtype).replace("torch.", "")
                ent["sigmas_rel_err_vs_f64"] = rel_err(sg, F.sigmas)
            out["schedules"][name][str(n)] = ent
        log(f"  {name}: timesteps 4 -> {out['schedules'][name]['4']['timesteps']}, "
            f"init_noise_sigma {out['schedules'][name]['4']['init_noise_sigma']:.4f}")

    # (b) traces
    for name in SAMPLER_NAMES:
        ns = (1, 2, 4, 8) if name == "lcm" else (1, 2, 4, 25)
        for n in ns:
            s = make_sampler(name, cfg)
            s.set_timesteps(n)
            g = torch.Generator("cpu").manual_seed(TRACE_SEED)
            x = torch.from_numpy(C.trace_x.copy())
            dens = []
            takes_gen = "generator" in inspect.signature(s.step).parameters
            for t in s.timesteps:
                x_in = s.scale_model_input(x, t)
                eps = torch.sin(x_in) * 0.5 + float(t) / 1000.0
                kw = dict(generator=g) if takes_gen else {}
                r = s.step(eps, t, x, **kw)
                x = r.prev_sample
                if name == "lcm":
                    dens.append(r.denoised)
            assert x.dtype == torch.float32
            C.save(f"sampler_{name}_{n}_trace", x)
            # float64 re-implementation with the same noise draws
            F = F64Sampler(name, n)
            g2 = torch.Generator("cpu").manual_seed(TRACE_SEED)
            x64 = torch.from_numpy(C.trace_x.copy()).double()
            dens64 = []
            for i in range(n):
                xin = F.scale(x64, i)
                eps = torch.sin(xin) * 0.5 + F.t_model(i) / 1000.0
                noise = torch.randn(x64.shape, generator=g2).double() if F.needs_noise(i) else None
                x64, d = F.step(eps, i, x64, noise)
                dens64.append(d)
            out["trace"]["rel_err_vs_f64"][f"{name}_{n}"] = rel_err(x, x64)
            if name == "lcm" and n == 8:
                C.save("sampler_lcm_8_denoised", torch.stack(dens))
                out["trace"]["rel_err_vs_f64"]["lcm_8_denoised"] = rel_err(torch.stack(dens), torch.stack(dens64))
    log("  trace rel err vs f64: max " + f"{max(out['trace']['rel_err_vs_f64'].values()):.2e}")

    # (c), (d) generations
    C.pipe_base = None
    for name in SAMPLER_NAMES:
        runs = [(f"sampler_{name}", 4, 3.0, None), (f"sampler_{name}_noise", 4, 3.0, C.gen_noise)]
        if name == "lcm":
            runs = [(f"sampler_lcm_{n}", n, 1.0, None) for n in (1, 2, 4, 8)] + [("sampler_lcm_noise", 4, 1.0, C.gen_noise)]
        for case, steps, guid, latents in runs:
            pipe = rc.make_pipeline(C.unet, C.enc, C.vae, make_sampler(name, C.sched_config))
            lat, imgs, seen, raw = run_pipe(C, pipe, steps, guid, latents=latents)
            xi, g = x_init(C, latents)
            x64 = manual_loop(name, steps, guid, xi, g, unet_eps_fn(C, C.unet64))
            more = {}
            if name in STOCHASTIC and latents is None and steps > 1:
                # counter-check: step noise from RESTARTED streams (fresh generators 42 + i) must not match
                xi2, _ = x_init(C, None)
                x_alt = manual_loop(name, steps, guid, xi2, gens(), unet_eps_fn(C, C.unet64))
                more["rel_err_if_step_noise_restarted_the_streams"] = rel_err(lat, x_alt)
            out["generations"][case] = gen_entry(C, case, lat, imgs, raw, seen, steps, guid, latents is not None,
                                                 name, rel_err(lat, x64), **more)
    out["noise_stream"] = (
        "Facts from diffusers (pipeline_stable_diffusion.prepare_latents / prepare_extra_step_kwargs, "
        "utils.torch_utils.randn_tensor, EulerAncestralDiscreteScheduler.step, LCMScheduler.step), confirmed by "
        "the float64 loops above, which draw exactly this way: the pipeline passes the same `generator` list to "
        "prepare_latents and to every scheduler.step. With a list of 2 CPU generators randn_tensor draws ONE "
        "torch.randn((1, 4, L, L), generator=generators[i]) per image i and concatenates on dim 0 (a list of "
        "length 1 is treated as a single generator). So image i's generator gives first its initial latents "
        "(when no latents are given), then the step noise of euler-a (a draw at EVERY step, including the last "
        "where sigma_up = 0) and of lcm (a draw at every step except the last), continuing its stream. With given "
        "latents no initial draw happens: the step noise starts at the beginning of each generator's stream. "
        "With CFG the noise has the shape of the guided eps (batch 2, not 4). euler (s_churn = 0), ddim (eta = 0) "
        "and dpmpp-2m never draw.")
    out["formulas"] = {
        "schedule": "betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2, alphas_cumprod = cumprod(1 - betas) "
                    "(diffusers: float32 torch), sigma(t) = sqrt((1 - ac[t]) / ac[t])",
        "dpmpp-2m": "timesteps round(linspace(0, 999, N + 1))[::-1][:-1]; sigmas sigma(t) + [0]; DPM-Solver++ 2M "
                    "(reference/params.json), first order at step 0 and at the last step (final_sigmas_type zero)",
        "dpmpp-2m-karras": "sigma_min = sigma(0), sigma_max = sigma(999) (from the float32 alphas_cumprod); "
                           "ramp = linspace(0, 1, N); sigmas = (sigma_max^(1/7) + ramp * (sigma_min^(1/7) - "
                           "sigma_max^(1/7)))^7 then + [0], stored float32; timesteps = round(t(sigma)) (numpy "
                           "half-to-even) with t(sigma) = piecewise-linear interpolation of log(sigma) over "
                           "log(sigma(0..999)) (DPMSolverMultistepScheduler._sigma_to_t), int64. Same DPM++ 2M "
                           "update on these sigmas; the UNet gets the rounded integer timesteps",
        "euler": "timesteps = linspace(0, 999, N, dtype=float32)[::-1] (FLOAT timesteps, e.g. 957.375 for N = 25, "
                 "passed to the UNet as they are; N = 1 gives [0] and init_noise_sigma = sigma(0) = 0.0292); sigmas = interp(timesteps, 0..999, sigma) + [0] (float32); "
                 "init_noise_sigma = max(sigmas) (timestep_spacing linspace: NOT sqrt(max^2 + 1)); "
                 "scale_model_input: x / sqrt(sigma_i^2 + 1); step: x0 = x - sigma_i * eps, "
                 "x += (x - x0) / sigma_i * (sigma_{i+1} - sigma_i) (computed in float32)",
        "euler-a": "same timesteps/sigmas/init_noise_sigma/scaling as euler; step: x0 = x - sigma_i * eps; "
                   "s_up = sqrt(s_{i+1}^2 (s_i^2 - s_{i+1}^2) / s_i^2); s_down = sqrt(s_{i+1}^2 - s_up^2); "
                   "x = x + (x - x0) / s_i * (s_down - s_i) + noise * s_up",
        "ddim": "timestep_spacing leading, steps_offset 1: timesteps = arange(N) * (1000 // N) reversed + 1 (N = 1 "
                "-> [1]); eta 0; prev_t = t - 1000 // N; a_prev = ac[prev_t] if prev_t >= 0 else ac[0] "
                "(set_alpha_to_one false); x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t); "
                "x = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps; no clipping (clip_sample false)",
        "lcm": "original_inference_steps 50: origin = (arange(1, 51) * 20 - 1)[::-1] = [999, 979, ..., 19]; "
               "timesteps = origin[floor(linspace(0, 50, N, endpoint=False))]; scale_model_input identity; step: "
               "x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t); c_skip = 0.25 / ((10 t)^2 + 0.25), c_out = 10 t / "
               "sqrt((10 t)^2 + 0.25); denoised = c_out x0 + c_skip x; if not the last step: x = "
               "sqrt(ac[t_next]) denoised + sqrt(1 - ac[t_next]) noise, else x = denoised. With "
               "StableDiffusionPipeline the loop keeps prev_sample; at the last step it equals denoised",
    }
    return out


# ============================================================================ 2. LoRA


def lora_unet_out(unet, C):
    with torch.no_grad():
        return unet(C.unet_sample, torch.tensor(500), encoder_hidden_states=C.unet_ehs).sample.numpy()


def fused_weights_via_diffusers(C, path, scale=1.0, **load_kw):
    """Load a LoRA file with diffusers into a fresh UNet copy, fuse at `scale`; {target: fused weight}."""
    unet = copy.deepcopy(C.unet)
    pipe = rc.make_pipeline(unet, C.enc, C.vae, rc.make_scheduler(C.sched_config))
    pipe.load_lora_weights(path, adapter_name="x", **load_kw)
    pipe.fuse_lora(components=["unet"], lora_scale=scale, adapter_names=["x"])
    sd = unet.state_dict()
    out = {}
    for name, _ in lora_targets(C.unet):
        k = name + ".base_layer.weight" if name + ".base_layer.weight" in sd else name + ".weight"
        out[name] = sd[k].clone()
    return out


def section_lora(C):
    log("== LoRA")
    lora_dir = os.path.join(C.feat, "lora")
    os.makedirs(lora_dir)
    cfg = C.unet.config
    s_ar = LORA_ALPHA / LORA_RANK
    targets = [n for n, _ in lora_targets(C.unet)]

    # size the LoRA: relative change of a UNet call at user scale 0.6
    gain = 1.0
    for _ in range(3):
        lora = random_lora(C.unet, LORA_RANK, 100, gain)
        o = lora_unet_out(fused_copy(C.unet, [(lora, 0.6 * s_ar)], torch.float32), C)
        ch = std_change(o, C.base_out500)
        gain *= LORA_TARGET_CHANGE / ch
    lora = random_lora(C.unet, LORA_RANK, 100, gain)
    log(f"  LoRA: {len(lora)} targets, up gain {gain:.4g}")

    # ---- the four layouts
    files = {}
    sd = kohya_dict(lora, LORA_ALPHA, kohya_name)
    save_st(os.path.join(lora_dir, "kohya_diffusers.safetensors"), sd)
    files["kohya_diffusers"] = "lora/kohya_diffusers.safetensors"
    sd_sd = kohya_dict(lora, LORA_ALPHA, lambda p: sd_block_name(p, cfg))
    save_st(os.path.join(lora_dir, "kohya_sd.safetensors"), sd_sd)
    files["kohya_sd"] = "lora/kohya_sd.safetensors"
    sd_diff = {}
    for path, (down, up) in lora.items():
        sd_diff[f"unet.{path}.lora.down.weight"] = down
        sd_diff[f"unet.{path}.lora.up.weight"] = up * s_ar
    save_st(os.path.join(lora_dir, "diffusers.safetensors"), sd_diff)
    files["diffusers"] = "lora/diffusers.safetensors"
    # peft: written by diffusers' own save_lora_weights with the adapter's LoraConfig as metadata, exactly as
    # the diffusers training scripts do (unet_lora_adapter_metadata = unet.peft_config[name].to_dict())
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    u_tmp = copy.deepcopy(C.unet)
    p_tmp = rc.make_pipeline(u_tmp, C.enc, C.vae, rc.make_scheduler(C.sched_config))
    p_tmp.load_lora_weights(os.path.join(lora_dir, "kohya_diffusers.safetensors"), adapter_name="default")
    peft_sd = get_peft_model_state_dict(u_tmp, adapter_name="default")
    meta = u_tmp.peft_config["default"].to_dict()
    # sets (target_modules) become sorted lists: the file must not depend on Python's hash seed
    meta = {k: (sorted(v) if isinstance(v, (set, frozenset)) else v) for k, v in meta.items()}
    assert meta["r"] == LORA_RANK and meta["lora_alpha"] == LORA_ALPHA, meta
    for path, (down, up) in lora.items():
        assert torch.equal(peft_sd[path + ".lora_A.weight"], down) and torch.equal(peft_sd[path + ".lora_B.weight"], up)
    StableDiffusionPipeline.save_lora_weights(lora_dir, unet_lora_layers=peft_sd, unet_lora_adapter_metadata=meta,
                                              weight_name="peft.safetensors")
    canonical_metadata_order(os.path.join(lora_dir, "peft.safetensors"))
    files["peft"] = "lora/peft.safetensors"
    from safetensors import safe_open

    with safe_open(os.path.join(lora_dir, "peft.safetensors"), "pt") as fh:
        peft_meta = dict(sorted(fh.metadata().items()))
    peft_keys = sorted(fh_keys(os.path.join(lora_dir, "peft.safetensors")))
    assert all(k.startswith("unet.") and (".lora_A.weight" in k or ".lora_B.weight" in k) for k in peft_keys)

    # ---- the kohya SD-name mapping vs diffusers' own converter
    from diffusers.loaders.lora_conversion_utils import (_convert_non_diffusers_lora_to_diffusers,
                                                         _maybe_map_sgm_blocks_to_diffusers)

    conv_d, alphas_d = _convert_non_diffusers_lora_to_diffusers(dict(sd))
    conv_s, alphas_s = _convert_non_diffusers_lora_to_diffusers(_maybe_map_sgm_blocks_to_diffusers(dict(sd_sd), cfg))
    inv_d = {id(v): k for k, v in conv_d.items()}
    mapping_rows, misrouted = [], []
    for path in targets:
        kd, ks = kohya_name(path), sd_block_name(path, cfg)
        d_key = inv_d[id(sd[kd + ".lora_down.weight"])]
        s_key = [k for k, v in conv_s.items() if v is sd_sd[ks + ".lora_down.weight"]][0]
        mapping_rows.append([path, kd, ks])
        if d_key != s_key:
            misrouted.append(dict(module=path, sd_name=ks, diffusers_converter_gives=s_key.split(".lora")[0]))
    log(f"  kohya SD names: {len(targets) - len(misrouted)}/{len(targets)} map like the diffusers-name file; "
        f"misrouted by diffusers: {[m['module'] for m in misrouted]}")

    # ---- all layouts load to the same effective weights
    own = {p: C.unet.state_dict()[p + ".weight"].double() + s_ar * lora_delta(d.double(), u.double())
           for p, (d, u) in lora.items()}
    fused = {}
    fused["kohya_diffusers"] = fused_weights_via_diffusers(C, os.path.join(lora_dir, "kohya_diffusers.safetensors"))
    fused["diffusers"] = fused_weights_via_diffusers(C, os.path.join(lora_dir, "diffusers.safetensors"))
    fused["peft"] = fused_weights_via_diffusers(C, os.path.join(lora_dir, "peft.safetensors"))
    load_notes = {}
    try:
        fused["kohya_sd"] = fused_weights_via_diffusers(C, os.path.join(lora_dir, "kohya_sd.safetensors"),
                                                        unet_config=cfg)
        load_notes["kohya_sd"] = "pipe.load_lora_weights(file, unet_config=pipe.unet.config) loads"
    except Exception as e:  # noqa: BLE001
        load_notes["kohya_sd"] = f"pipe.load_lora_weights(file, unet_config=...) raises {describe_error(e)}"
    try:
        with quiet():
            fused_weights_via_diffusers(C, os.path.join(lora_dir, "kohya_sd.safetensors"))
        load_notes["kohya_sd_without_unet_config"] = "loads (unexpected)"
    except Exception as e:  # noqa: BLE001
        load_notes["kohya_sd_without_unet_config"] = f"raises {describe_error(e)}"
    agree = {}
    ref_f = fused["kohya_diffusers"]
    for k, fw in fused.items():
        miss = {m["module"] for m in misrouted} if k == "kohya_sd" else set()
        agree[k] = dict(
            max_abs_diff_vs_kohya_diffusers=float(max((fw[p] - ref_f[p]).abs().max() for p in targets if p not in miss)),
            max_abs_diff_vs_own_f64=float(max((fw[p].double() - own[p]).abs().max() for p in targets if p not in miss)),
            modules_compared=len(targets) - len(miss))
        if miss:
            agree[k]["modules_without_lora_in_diffusers"] = {
                p: float((fw[p] - C.unet.state_dict()[p + ".weight"]).abs().max()) for p in miss}
    log(f"  fused-weight agreement: {agree}")

    # ---- UNet outputs
    def pipe_with(loras):
        u = copy.deepcopy(C.unet)
        p = rc.make_pipeline(u, C.enc, C.vae, rc.make_scheduler(C.sched_config))
        names, ws = [], []
        for i, (f, w) in enumerate(loras):
            p.load_lora_weights(f, adapter_name=f"l{i}")
            names.append(f"l{i}")
            ws.append(w)
        p.set_adapters(names, adapter_weights=ws)
        return p

    kd_file = os.path.join(lora_dir, "kohya_diffusers.safetensors")
    res = {}
    for s in (0.6, 1.0):
        p = pipe_with([(kd_file, s)])
        o = lora_unet_out(p.unet, C)
        C.save(f"lora_unet_out_scale{s}", o)
        u2 = copy.deepcopy(C.unet)
        p2 = rc.make_pipeline(u2, C.enc, C.vae, rc.make_scheduler(C.sched_config))
        p2.load_lora_weights(kd_file, adapter_name="f")
        p2.fuse_lora(components=["unet"], lora_scale=s, adapter_names=["f"])
        o_f = lora_unet_out(u2, C)
        o64 = lora_unet_out(fused_copy(C.unet, [(lora, s * s_ar)]), C_double(C))
        res[f"scale{s}"] = dict(file=f"lora_unet_out_scale{s}.npy", change=std_change(o, C.base_out500),
                                rel_err_set_adapters_vs_fuse_lora=rel_err(o, o_f),
                                rel_err_vs_own_f64_fused=rel_err(o, o64))
    # second LoRA: peft layout WITHOUT metadata (alpha = rank), rank 2, attention + conv1 only
    second = random_lora(C.unet, SECOND_LORA_RANK, 200, gain * 1.5,
                         only=lambda n: n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0", ".conv1")))
    sd2 = {}
    for path, (down, up) in second.items():
        sd2[f"unet.{path}.lora_A.weight"] = down
        sd2[f"unet.{path}.lora_B.weight"] = up
    save_st(os.path.join(lora_dir, "second_peft.safetensors"), sd2)
    files["second_peft"] = "lora/second_peft.safetensors"
    p = pipe_with([(kd_file, 0.6), (os.path.join(lora_dir, "second_peft.safetensors"), 0.3)])
    o = lora_unet_out(p.unet, C)
    C.save("lora_two_unet_out", o)
    o64 = lora_unet_out(fused_copy(C.unet, [(lora, 0.6 * s_ar), (second, 0.3 * 1.0)]), C_double(C))
    res["two"] = dict(file="lora_two_unet_out.npy", change=std_change(o, C.base_out500),
                      rel_err_vs_own_f64_fused=rel_err(o, o64))
    log(f"  UNet outputs: {res}")

    # unmatched file
    sd_un = {}
    for name, shape_in, shape_out in (("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 32, 32),
                                      ("lora_unet_nonexistent_block_0_proj", 8, 8)):
        sd_un[name + ".lora_down.weight"] = torch.full((LORA_RANK, shape_in), 0.01)
        sd_un[name + ".lora_up.weight"] = torch.full((shape_out, LORA_RANK), 0.01)
        sd_un[name + ".alpha"] = torch.tensor(LORA_ALPHA)
    save_st(os.path.join(lora_dir, "unmatched.safetensors"), sd_un)
    files["unmatched"] = "lora/unmatched.safetensors"
    try:
        u = copy.deepcopy(C.unet)
        p = rc.make_pipeline(u, C.enc, C.vae, rc.make_scheduler(C.sched_config))
        with quiet():
            p.load_lora_weights(os.path.join(lora_dir, "unmatched.safetensors"), adapter_name="u")
        changed = any(not torch.equal(a, b) for a, b in zip(u.state_dict().values(), C.unet.state_dict().values()))
        unmatched_note = f"diffusers loads it without error (UNet weights changed: {changed})"
    except Exception as e:  # noqa: BLE001
        unmatched_note = f"diffusers load_lora_weights raises {describe_error(e)}"
    log(f"  unmatched: {unmatched_note}")

    # seeded generation with the LoRA at 0.6
    p = pipe_with([(kd_file, 0.6)])
    p.scheduler = rc.make_scheduler(C.sched_config)
    lat, imgs, seen, raw = run_pipe(C, p, 4, 3.0)
    xi, g = x_init(C, None)
    x64 = manual_loop("dpmpp-2m", 4, 3.0, xi, g, unet_eps_fn(C, fused_copy(C.unet, [(lora, 0.6 * s_ar)])))
    base_lat = np.load(os.path.join(C.ref_dir, "gen_seed_latents.npy"))
    gen = gen_entry(C, "lora", lat, imgs, raw, seen, 4, 3.0, False, "dpmpp-2m", rel_err(lat, x64),
                    lora="lora/kohya_diffusers.safetensors", lora_scale=0.6,
                    change_vs_reference_gen_seed=std_change(lat, base_lat))

    return dict(
        rank=LORA_RANK, alpha=LORA_ALPHA, alpha_over_rank=s_ar, up_gain=gain,
        random_init=f"per target module (in named_modules order), torch.Generator seed 100: down ~ N(0, 1/fan_in) "
                    f"(shape (r, in) or (r, in, kh, kw)), then up ~ N(0, (up_gain^2)/r) (shape (out, r) or "
                    f"(out, r, 1, 1)); float32",
        targets=targets,
        target_rule="every Linear/Conv2d under down_blocks/mid_block/up_blocks whose path ends with " +
                    ", ".join(LORA_SUFFIXES),
        effective_weight="W' = W + user_scale * (alpha / rank) * delta; delta = up @ down for Linear; for Conv2d "
                         "delta[o, i, kh, kw] = sum_r up[o, r, 0, 0] * down[r, i, kh, kw] (the down conv keeps the "
                         "layer's kernel, stride and padding; up is 1x1)",
        files=files,
        layouts={
            "kohya_diffusers": "lora_unet_<diffusers path with . -> _>.lora_down.weight / .lora_up.weight / .alpha "
                               "(float32 0-dim tensor = 2.0)",
            "kohya_sd": "same with the original SD (LDM) block names, float32, alpha as above; mapping_rules below",
            "diffusers": "unet.<path>.lora.down.weight / unet.<path>.lora.up.weight, no alpha anywhere. diffusers "
                         "reads no alpha key in this layout (checked: extra 'unet.<path>.alpha' keys make "
                         "load_lora_weights raise ValueError 'Invalid LoRA checkpoint' (every key must contain "
                         "'lora'); 'unet.<path>.lora.alpha' keys are ignored); only safetensors metadata "
                         "(lora_adapter_metadata, as in peft.safetensors) could carry it. Without it alpha = rank "
                         "(scale 1.0), so the up weights are stored pre-multiplied by alpha/rank = 0.5: same delta "
                         "as the kohya files",
            "peft": "unet.<path>.lora_A.weight / unet.<path>.lora_B.weight (A = down, B = up, unscaled); alpha in "
                    "the safetensors metadata: key 'lora_adapter_metadata' = JSON of the LoraConfig with keys "
                    "prefixed 'unet.' ('unet.r': 4, 'unet.lora_alpha': 2.0, 'unet.target_modules': [...], ...), as "
                    "StableDiffusionPipeline.save_lora_weights(unet_lora_adapter_metadata=...) writes it; diffusers "
                    "strips the 'unet.' prefix and builds LoraConfig(**metadata) (loaders/peft.py "
                    "load_lora_adapter, utils/peft_utils._create_lora_config)",
            "second_peft": "peft layout WITHOUT metadata: diffusers then uses lora_alpha = r (get_peft_kwargs), "
                           f"scale 1.0; rank {SECOND_LORA_RANK}, targets attention to_q/to_k/to_v/to_out.0 and "
                           "resnet conv1 only, torch.Generator seed 200, up gain 1.5 * up_gain",
            "unmatched": "only keys lora_te_text_model_encoder_layers_0_self_attn_q_proj.* and "
                         "lora_unet_nonexistent_block_0_proj.* (lora_down/lora_up/alpha): nothing in the UNet",
        },
        peft_metadata=peft_meta,
        mapping_rules=dict(
            sd_names="L = layers_per_block. down_blocks.b.{resnets|attentions}.j -> input_blocks_{1 + b(L+1) + j}_"
                     "{0 resnet | 1 attention}; down_blocks.b.downsamplers.0.conv -> input_blocks_{(b+1)(L+1)}_0_op; "
                     "mid_block.resnets.0 -> middle_block_0, mid_block.attentions.0 -> middle_block_1, "
                     "mid_block.resnets.1 -> middle_block_2; up_blocks.b.{resnets|attentions}.j -> output_blocks_"
                     "{b(L+1) + j}_{0|1}; up_blocks.b.upsamplers.0.conv -> output_blocks_{b(L+1) + L}_{2 if the up "
                     "block has attentions else 1}_conv. Inside resnets: conv1 -> in_layers_2, conv2 -> "
                     "out_layers_3, time_emb_proj -> emb_layers_1, conv_shortcut -> skip_connection. Inside "
                     "attentions the names stay (proj_in, proj_out, transformer_blocks_0_attn1_to_q, ..._to_out_0, "
                     "..._ff_net_0_proj, ..._ff_net_2)",
            table=mapping_rows,
            diffusers_converter="StableDiffusionLoraLoaderMixin.lora_state_dict remaps SD block names ONLY when "
                                "unet_config is passed (load_lora_weights(file, unet_config=unet.config)); then "
                                "_maybe_map_sgm_blocks_to_diffusers(delimiter '_', block_slice_pos 5): "
                                "input_blocks_i_k -> down_blocks.(i-1)//(L+1).{resnets|attentions}[k].(i-1)%(L+1), "
                                "'op' in key -> downsamplers.0; middle_block_0/1/2 -> resnets.0/attentions.0/"
                                "resnets.1; output_blocks_i_k -> up_blocks.i//(L+1).[resnets, attentions, "
                                "upsamplers][k].(i%(L+1) for k < 2 else 0); then _convert_unet_lora_key "
                                "(in_layers_2 -> conv1, out_layers_3 -> conv2, emb_layers_1 -> time_emb_proj, "
                                "skip_connection -> conv_shortcut, op -> conv)",
            misrouted_by_diffusers=misrouted,
            misrouted_note="diffusers' converter takes the sub-index k of output_blocks_i_k as [resnets, "
                           "attentions, upsamplers][k]; in an up block WITHOUT attentions (UpBlock2D) the "
                           "upsampler is output_blocks_{b(L+1)+L}_1_conv in SD, which diffusers sends to a "
                           "nonexistent up_blocks.b.attentions.L.conv and drops (its weight stays unchanged). The "
                           "structural mapping above is the correct one (A1111/kohya). agreement.kohya_sd compares "
                           "the other modules",
        ),
        load_notes=load_notes,
        agreement=agree,
        unet_outputs=dict(
            recipe="pipe.load_lora_weights(lora/kohya_diffusers.safetensors, adapter_name=n); "
                   "pipe.set_adapters([n], adapter_weights=[s]); pipe.unet(reference/unet_sample.npy, 500, "
                   "encoder_hidden_states=reference/unet_encoder_hidden_states.npy).sample; the independent check "
                   "fuses W + s * alpha/rank * delta by hand into a float64 UNet; fuse_lora(lora_scale=s) agrees",
            two_recipe="kohya_diffusers at 0.6 plus second_peft at 0.3 (set_adapters([a, b], adapter_weights=[0.6, 0.3])): "
                "W' = W + 0.6 * 0.5 * delta_a + 0.3 * 1.0 * delta_b",
            **res),
        unmatched_in_diffusers=unmatched_note,
        generation=gen,
    )


def canonical_metadata_order(path):
    """safetensors keeps __metadata__ in a Rust HashMap, so its key order in the header (and the file's bytes)
    changes from run to run; rewrite the header with the metadata keys sorted (same length, same content)."""
    import struct

    with open(path, "rb") as fh:
        raw = fh.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    new = json.dumps(header, separators=(",", ":")).encode()
    assert len(new) <= n
    with open(path, "wb") as fh:
        fh.write(raw[:8] + new + b" " * (n - len(new)) + raw[8 + n:])


def fh_keys(path):
    from safetensors import safe_open

    with safe_open(path, "pt") as fh:
        return list(fh.keys())


def C_double(C):
    """A view of C whose UNet inputs are float64 (for lora_unet_out on float64 copies)."""
    D = Ctx()
    D.unet_sample = C.unet_sample.double()
    D.unet_ehs = C.unet_ehs.double()
    return D


# ============================================================================ 3. LCM-LoRA


def section_fast(C):
    log("== LCM-LoRA (fast)")
    s_ar = LCM_LORA_ALPHA / LCM_LORA_RANK
    gain = 1.0
    for _ in range(3):
        lora = random_lora(C.unet, LCM_LORA_RANK, 300, gain)
        lora = {k: (d.half().float(), u.half().float()) for k, (d, u) in lora.items()}
        o = lora_unet_out(fused_copy(C.unet, [(lora, s_ar)], torch.float32), C)
        gain *= LCM_LORA_TARGET_CHANGE / std_change(o, C.base_out500)
    lora = random_lora(C.unet, LCM_LORA_RANK, 300, gain)
    lora = {k: (d.half().float(), u.half().float()) for k, (d, u) in lora.items()}  # values of the fp16 file
    path = os.path.join(C.models_dir, "lcm_lora", "pytorch_lora_weights.safetensors")
    save_st(path, kohya_dict(lora, LCM_LORA_ALPHA, kohya_name, torch.float16))
    o = lora_unet_out(fused_copy(C.unet, [(lora, s_ar)], torch.float32), C)
    change = std_change(o, C.base_out500)

    def pipe():
        u = copy.deepcopy(C.unet)
        p = rc.make_pipeline(u, C.enc, C.vae, make_sampler("lcm", C.sched_config))
        p.load_lora_weights(path, adapter_name="lcm")
        p.set_adapters(["lcm"], adapter_weights=[1.0])
        return p

    gens_out = {}
    u64 = fused_copy(C.unet, [(lora, s_ar)])
    for case, steps in (("fast", 4), ("fast_2", 2)):
        lat, imgs, seen, raw = run_pipe(C, pipe(), steps, 1.0)
        xi, g = x_init(C, None)
        x64 = manual_loop("lcm", steps, 1.0, xi, g, unet_eps_fn(C, u64))
        ref_lat = np.load(os.path.join(C.feat, f"gen_sampler_lcm_{steps}_latents.npy")) if os.path.exists(
            os.path.join(C.feat, f"gen_sampler_lcm_{steps}_latents.npy")) else None
        more = dict(lora="models/lcm_lora/pytorch_lora_weights.safetensors", lora_scale=1.0)
        if ref_lat is not None:
            more["change_vs_lcm_without_lora"] = std_change(lat, ref_lat)
        gens_out[case] = gen_entry(C, case, lat, imgs, raw, seen, steps, 1.0, False, "lcm", rel_err(lat, x64), **more)
    return dict(
        file="models/lcm_lora/pytorch_lora_weights.safetensors",
        layout="kohya keys with diffusers module names (lora_unet_<path with _>.lora_down.weight / .lora_up.weight "
               "/ .alpha), float16 like latent-consistency/lcm-lora-sdv1-5; the same target modules as section lora",
        rank=LCM_LORA_RANK, alpha=LCM_LORA_ALPHA, alpha_over_rank=s_ar, up_gain=gain,
        random_init="torch.Generator seed 300, same recipe as section lora, then rounded to float16 (the references "
                    "use the float16 values)",
        unet_change_at_scale_1=change,
        recipe="pipe = StableDiffusionPipeline with LCMScheduler.from_config(scheduler_config); "
               "pipe.load_lora_weights(file, adapter_name='lcm'); set_adapters(['lcm'], [1.0]); guidance 1.0 (no "
               "CFG), GENS seeds 42 + i, 4 steps (gen_fast) and 2 steps (gen_fast_2); what --fast does",
        generations=gens_out,
    )


# ============================================================================ 4. ControlNet


def control_image(size):
    """Deterministic 8-bit RGB: grey (127,127,127) with a smooth normal-map-coloured head blob."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cx, cy, rx, ry = 0.48 * size, 0.45 * size, 0.30 * size, 0.38 * size
    u, v = (xx + 0.5 - cx) / rx, (yy + 0.5 - cy) / ry
    r2 = u ** 2 + v ** 2
    nz = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    n = np.stack([np.clip(u, -1, 1), np.clip(-v, -1, 1), nz], -1)
    col = (n * 0.5 + 0.5) * 255.0
    edge = np.clip((1.0 - np.sqrt(r2)) / 0.15, 0.0, 1.0)
    w = (edge * edge * (3 - 2 * edge))[..., None]
    img = w * col + (1 - w) * 127.0
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def section_control(C):
    log("== ControlNet")
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from PIL import Image

    # from_unet's default conditioning embedding at this size
    cn_default = ControlNetModel.from_unet(C.unet)
    img_t = torch.zeros((2, 3, C.size, C.size))
    try:
        with torch.no_grad():
            cn_default(C.unet_sample, torch.tensor(500), encoder_hidden_states=C.unet_ehs, controlnet_cond=img_t)
        default_note = "works"
    except Exception as e:  # noqa: BLE001
        default_note = f"fails: {type(e).__name__}: {e}"
    n_down = int(round(math.log2(C.sf)))
    chans = tuple([8] + [16] * n_down)
    cn = ControlNetModel.from_unet(C.unet, conditioning_embedding_out_channels=chans)
    torch.manual_seed(500)
    mf.init_weights(cn)
    img = control_image(C.size)
    C.save("control_image", img, np.uint8)
    Image.fromarray(img).save(os.path.join(C.feat, "control.png"))
    assert np.array_equal(np.asarray(Image.open(os.path.join(C.feat, "control.png")).convert("RGB")), img)
    C.files["control.png"] = dict(shape=list(img.shape), dtype="uint8 PNG RGB")
    ctrl = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    ctrl2 = torch.cat([ctrl, ctrl])

    zero_convs = [m for n, m in cn.named_modules() if n.startswith(("controlnet_down_blocks.", "controlnet_mid_block"))
                  and isinstance(m, nn.Conv2d)]

    def unet_with(cnet, unet, sample, ehs, scale=1.0):
        with torch.no_grad():
            d, m = cnet(sample, torch.tensor(500), encoder_hidden_states=ehs, controlnet_cond=ctrl2.to(sample.dtype),
                        conditioning_scale=scale, return_dict=False)
            o = unet(sample, torch.tensor(500), encoder_hidden_states=ehs, down_block_additional_residuals=d,
                     mid_block_additional_residual=m).sample
        return d, m, o

    f_total = 1.0
    for _ in range(3):
        _, _, o = unet_with(cn, C.unet, C.unet_sample, C.unet_ehs)
        f = CONTROL_TARGET_CHANGE / std_change(o.numpy(), C.base_out500)
        f_total *= f
        with torch.no_grad():
            for m in zero_convs:
                m.weight.mul_(f)
                m.bias.mul_(f)
    cdir = os.path.join(C.models_dir, "controlnet")
    cn.save_pretrained(cdir, safe_serialization=True)
    cn2 = ControlNetModel.from_pretrained(cdir, torch_dtype=torch.float32).eval()
    for (k, a), (k2, b) in zip(cn.state_dict().items(), cn2.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    cn = cn2
    C.controlnet = cn
    C.cn64 = copy.deepcopy(cn).double().eval()
    C.ctrl = ctrl

    d, m, o = unet_with(cn, C.unet, C.unet_sample, C.unet_ehs)
    for k, r in enumerate(d):
        C.save(f"controlnet_down_{k}", r)
    C.save("controlnet_mid", m)
    C.save("controlnet_unet_out", o)
    d64, m64, o64 = unet_with(C.cn64, C.unet64, C.unet_sample.double(), C.unet_ehs.double())
    raw = dict(
        recipe="controlnet(reference/unet_sample.npy, 500, encoder_hidden_states=reference/"
               "unet_encoder_hidden_states.npy, controlnet_cond=cat([c, c]), conditioning_scale=1.0, "
               "return_dict=False) with c = control_image.npy (HWC uint8) -> float32 / 255, CHW, batch 1; then "
               "unet(..., down_block_additional_residuals=down, mid_block_additional_residual=mid) -> "
               "controlnet_unet_out.npy",
        down_files=[f"controlnet_down_{k}.npy" for k in range(len(d))],
        down_shapes=[list(r.shape) for r in d], mid_file="controlnet_mid.npy", mid_shape=list(m.shape),
        unet_out_file="controlnet_unet_out.npy", change_vs_reference_unet_out_t500=std_change(o.numpy(), C.base_out500),
        rel_err_vs_f64_models=dict(down=max(rel_err(a, b) for a, b in zip(d, d64)), mid=rel_err(m, m64),
                                   unet_out=rel_err(o, o64)),
    )
    log(f"  raw forward: {len(d)} down residuals, change {raw['change_vs_reference_unet_out_t500']:.3f}")

    # pipelines
    def pipe(unet=None):
        p = StableDiffusionControlNetPipeline(
            vae=C.vae, text_encoder=C.enc, tokenizer=None, unet=unet or C.unet, controlnet=cn,
            scheduler=rc.make_scheduler(C.sched_config), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        p.set_progress_bar_config(disable=True)
        return p

    pil = Image.open(os.path.join(C.feat, "control.png")).convert("RGB")
    seen_cond = []
    h = cn.register_forward_pre_hook(lambda mod, a, kw: seen_cond.append(kw["controlnet_cond"].clone()),
                                     with_kwargs=True)
    seen_scales = []
    h2 = cn.register_forward_pre_hook(lambda mod, a, kw: seen_scales.append(float(kw["conditioning_scale"])),
                                      with_kwargs=True)
    gens_out = {}
    cases = [("control_s1", 5, 3.0, 1.0, 0.0, 1.0, C.gen_noise),
             ("control_s05", 5, 3.0, 0.5, 0.0, 1.0, C.gen_noise),
             ("control_nocfg", 5, 1.0, 1.0, 0.0, 1.0, C.gen_noise),
             ("control_window", 5, 3.0, 1.0, 0.2, 0.8, C.gen_noise),
             ("control_seed", 4, 3.0, 1.0, 0.0, 1.0, None)]
    for case, steps, guid, scale, cs, ce, latents in cases:
        seen_cond.clear()
        seen_scales.clear()
        lat, imgs, seen, rawd = run_pipe(C, pipe(), steps, guid, latents=latents, check_np=False,
                                         extra=dict(image=pil, controlnet_conditioning_scale=scale,
                                                    control_guidance_start=cs, control_guidance_end=ce))
        exp_c = torch.cat([ctrl] * (4 if guid > 1 else 2))
        assert torch.equal(seen_cond[0], exp_c), "control image preprocessing differs from uint8 / 255"
        keep = [1.0 - float(i / steps < cs or (i + 1) / steps > ce) for i in range(steps)]
        assert seen_scales == [scale * k for k in keep], (seen_scales, keep)

        def extra_fn(x, t, i, cfg, scale=scale, keep=keep):
            ehs = torch.cat([C.uncond64, C.uncond64, C.cond64, C.cond64]) if cfg else torch.cat([C.cond64, C.cond64])
            cc = torch.cat([ctrl] * x.shape[0]).double()
            with torch.no_grad():
                dd, mm = C.cn64(x, torch.tensor(t), encoder_hidden_states=ehs, controlnet_cond=cc,
                                conditioning_scale=scale * keep[i], return_dict=False)
            return dict(down_block_additional_residuals=dd, mid_block_additional_residual=mm)

        xi, g = x_init(C, latents)
        x64 = manual_loop("dpmpp-2m", steps, guid, xi, g, unet_eps_fn(C, C.unet64, extra_fn))
        ref_name = {5: ("gen_cfg_latents.npy" if guid > 1 else "gen_nocfg_latents.npy"), 4: "gen_seed_latents.npy"}
        base_lat = np.load(os.path.join(C.ref_dir, ref_name[steps]))
        gens_out[case] = gen_entry(C, case, lat, imgs, rawd, seen, steps, guid, latents is not None, "dpmpp-2m",
                                   rel_err(lat, x64), controlnet_conditioning_scale=scale,
                                   control_guidance_start=cs, control_guidance_end=ce, per_step_scale=seen_scales[:],
                                   change_vs_plain_generation=std_change(lat, base_lat))
    h.remove()
    h2.remove()

    cfgd = {k: v for k, v in dict(cn.config).items() if not k.startswith("_")}
    return dict(
        folder="models/controlnet (config.json + diffusion_pytorch_model.safetensors, save_pretrained, float32)",
        built_as=f"ControlNetModel.from_unet(unet, conditioning_embedding_out_channels={list(chans)}), then every "
                 f"weight re-randomised with make_fixtures.init_weights after torch.manual_seed(500) (zero convs "
                 f"included), then controlnet_down_blocks.* and controlnet_mid_block (weights and biases) multiplied "
                 f"by {f_total:.6g} so the residuals change the UNet output by ~{CONTROL_TARGET_CHANGE}",
        from_unet_default_embedding=f"conditioning_embedding_out_channels (16, 32, 96, 256) (3 stride-2 convs, 8x) "
                                    f"{default_note}",
        embedding_choice=f"the conditioning embedding must downsample by the VAE scale factor {C.sf} (image "
                         f"{C.size} px -> latents {C.lat}): len(conditioning_embedding_out_channels) - 1 = "
                         f"log2({C.sf}) = {n_down} stride-2 convs; SD1.5's (16, 32, 96, 256) has 3 for factor 8",
        config=cfgd,
        zero_conv_scale=f_total,
        control_image=dict(png="control.png", npy="control_image.npy (uint8 HWC RGB)", shape=list(img.shape),
                           recipe="grey 127 with a normal-map ellipse (centre 0.48/0.45 size, radii 0.30/0.38 size), "
                                  "smoothstep edge; see control_image() in the tool"),
        preprocessing="VaeImageProcessor(vae_scale_factor, do_convert_rgb=True, do_normalize=False).preprocess(pil, "
                      "height, width): convert RGB, resize only when the size differs (PIL, lanczos; the image "
                      "here is already the generation size: no resize), float32 = uint8 / 255 in [0, 1] (no "
                      "[-1, 1] normalisation), HWC -> NCHW, RGB order; repeated to the image batch (2) and, with "
                      "CFG, duplicated again: cat([img, img]) -> batch 4 matching [uncond x2, cond x2]; checked "
                      "with a hook: the ControlNet input equals control_image.npy / 255 exactly",
        controlnet_call="each step: down, mid = controlnet(latent_model_input (the same scaled batch the UNet "
                        "gets), t, encoder_hidden_states=prompt_embeds (the same [uncond, cond] batch), "
                        "controlnet_cond=image, conditioning_scale=scale * keep[i]); the UNet adds each down "
                        "residual to the matching skip and mid to the mid-block output; without CFG only the "
                        "conditional batch; guess_mode false. The ControlNet does not get the IP-Adapter tokens",
        controlnet_keep="keep[i] = 1.0 - float(i / N < start or (i + 1) / N > end) (python floats), i = 0..N-1; "
                        "per-step conditioning scale = controlnet_conditioning_scale * keep[i]; a step with scale 0 "
                        "still runs the ControlNet (residuals x 0). N = 5, start 0.2, end 0.8 -> keep [0, 1, 1, 1, 0]",
        raw_forward=raw,
        generations=gens_out,
        pipeline="StableDiffusionControlNetPipeline(vae, text_encoder, tokenizer=None, unet, controlnet, "
                 "scheduler=DPMSolverMultistepScheduler.from_config(config), safety_checker=None, "
                 "feature_extractor=None, requires_safety_checker=False)(image=PIL RGB control.png, "
                 "controlnet_conditioning_scale=s, control_guidance_start=a, control_guidance_end=b, + common)",
    )


# ============================================================================ 5. Expression Adapter


class OwnIPProc:
    """Independent decoupled cross-attention: softmax(QK^T/sqrt(d))V on text + scale * same on the ip tokens."""

    def __init__(self, wk, wv, holder):
        self.wk, self.wv, self.holder = wk, wv, holder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        def mha(q, k, v):
            b, n, c = q.shape
            hd = c // attn.heads
            q = q.view(b, -1, attn.heads, hd).transpose(1, 2)
            k = k.view(b, -1, attn.heads, hd).transpose(1, 2)
            v = v.view(b, -1, attn.heads, hd).transpose(1, 2)
            p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1)
            return (p @ v).transpose(1, 2).reshape(b, -1, c)

        q = attn.to_q(hidden_states)
        out = mha(q, attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states))
        tok = self.holder["tokens"]
        if self.holder["scale"] != 0:
            out = out + self.holder["scale"] * mha(q, tok @ self.wk.T, tok @ self.wv.T)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def own_tokens(image_proj, e, kind):
    """float64 image projection of expression batch e (B, 55) -> (B, T, cross)."""
    ip = {k: v.double() for k, v in image_proj.items()}
    e = e.double()
    if kind == "linear":
        y = (e @ ip["proj.weight"].T + ip["proj.bias"]).reshape(e.shape[0], EXPR_TOKENS, -1)
        return torch.nn.functional.layer_norm(y, y.shape[-1:], ip["norm.weight"], ip["norm.bias"], 1e-5)
    h = torch.nn.functional.gelu(e @ ip["proj.0.weight"].T + ip["proj.0.bias"])
    y = (h @ ip["proj.2.weight"].T + ip["proj.2.bias"])[:, None]
    return torch.nn.functional.layer_norm(y, y.shape[-1:], ip["proj.3.weight"], ip["proj.3.bias"], 1e-5)


def own_ip_unet(C, adapter, kind, base=None):
    """float64 UNet copy with OwnIPProc on every attn2; returns (unet, holder)."""
    u = copy.deepcopy(base if base is not None else C.unet64).double().eval()
    holder = dict(tokens=None, scale=1.0)
    procs = {}
    k = 1
    for name, proc in u.attn_processors.items():
        if name.endswith("attn2.processor"):
            procs[name] = OwnIPProc(adapter["ip_adapter"][f"{k}.to_k_ip.weight"].double(),
                                    adapter["ip_adapter"][f"{k}.to_v_ip.weight"].double(), holder)
            k += 2
        else:
            procs[name] = proc
    u.set_attn_processor(procs)
    return u, holder


def section_expression(C):
    log("== Expression Adapter")
    from diffusers import StableDiffusionControlNetPipeline

    cross = C.unet.config.cross_attention_dim
    g = torch.Generator("cpu").manual_seed(600)
    coeffs = torch.randn(50, generator=g) * 1.5
    eyelids = torch.rand(2, generator=g)
    jaw = torch.stack([torch.rand(1, generator=g)[0] * 0.3, (torch.rand(1, generator=g)[0] * 2 - 1) * 0.2,
                       (torch.rand(1, generator=g)[0] * 2 - 1) * 0.2])
    expr = torch.cat([coeffs, eyelids, jaw]).float()
    C.save("expression", expr)
    assert jaw[0] >= 0 and abs(jaw[1]) <= 0.2 and abs(jaw[2]) <= 0.2 and 0 <= eyelids.min() and eyelids.max() <= 1

    order = []
    k = 1
    for name in C.unet.attn_processors.keys():
        if name.endswith("attn2.processor"):
            mod = C.unet.get_submodule(name[: -len(".processor")])
            order.append(dict(k=k, layer=name[: -len(".processor")], hidden_size=mod.to_q.out_features,
                              heads=mod.heads))
            k += 2

    def make_adapter(seed, kind, v_gain):
        gg = torch.Generator("cpu").manual_seed(seed)

        def rn(*shape, std=1.0):
            return (torch.randn(shape, generator=gg) * std).contiguous()

        if kind == "linear":
            image_proj = {"proj.weight": rn(EXPR_TOKENS * cross, EXPR_DIM, std=EXPR_DIM ** -0.5),
                          "proj.bias": rn(EXPR_TOKENS * cross, std=0.05),
                          "norm.weight": 1.0 + rn(cross, std=0.1), "norm.bias": rn(cross, std=0.05)}
        else:
            image_proj = {"proj.0.weight": rn(EXPR_DIM, EXPR_DIM, std=EXPR_DIM ** -0.5), "proj.0.bias": rn(EXPR_DIM, std=0.05),
                          "proj.2.weight": rn(cross, EXPR_DIM, std=EXPR_DIM ** -0.5), "proj.2.bias": rn(cross, std=0.05),
                          "proj.3.weight": 1.0 + rn(cross, std=0.1), "proj.3.bias": rn(cross, std=0.05)}
        ip = {}
        for o in order:
            ip[f"{o['k']}.to_k_ip.weight"] = rn(o["hidden_size"], cross, std=cross ** -0.5) * 2.0
            ip[f"{o['k']}.to_v_ip.weight"] = rn(o["hidden_size"], cross, std=cross ** -0.5) * v_gain
        return {"image_proj": image_proj, "ip_adapter": ip}

    embeds_cfg = torch.stack([torch.zeros(EXPR_DIM), expr])[:, None]  # (2, 1, 55)
    e_batch = torch.cat([torch.zeros(2, EXPR_DIM), expr[None].repeat(2, 1)])  # UNet batch order for CFG

    def calibrated(seed, kind):
        v_gain = 1.0
        for _ in range(3):
            ad = make_adapter(seed, kind, v_gain)
            u, holder = own_ip_unet(C, ad, kind, base=C.unet)
            u = u.float()
            holder["tokens"] = own_tokens(ad["image_proj"], torch.stack([torch.zeros(EXPR_DIM), expr]), kind).float()
            for proc in u.attn_processors.values():
                if isinstance(proc, OwnIPProc):
                    proc.wk, proc.wv = proc.wk.float(), proc.wv.float()
            with torch.no_grad():
                o = u(C.unet_sample, torch.tensor(500), encoder_hidden_states=C.unet_ehs).sample.numpy()
            v_gain *= EXPR_TARGET_CHANGE / std_change(o, C.base_out500)
        return make_adapter(seed, kind, v_gain), v_gain

    adapter, v_gain = calibrated(700, "linear")
    adapter_mlp, v_gain_mlp = calibrated(800, "mlp")
    adir = os.path.join(C.models_dir, "exp_adapter")
    os.makedirs(adir)
    torch.save(adapter, os.path.join(adir, "exp_adapter.bin"))
    torch.save(adapter_mlp, os.path.join(C.feat, "exp_adapter_mlp.bin"))
    C.files["exp_adapter_mlp.bin"] = dict(shape=None, dtype="torch pickle (zip)")
    chk = torch.load(os.path.join(adir, "exp_adapter.bin"), weights_only=True)
    assert all(torch.equal(chk[a][b], adapter[a][b]) for a in adapter for b in adapter[a])

    def sd_pipe(folder, weight_name, control=False):
        u = copy.deepcopy(C.unet)
        if control:
            p = StableDiffusionControlNetPipeline(
                vae=C.vae, text_encoder=C.enc, tokenizer=None, unet=u, controlnet=C.controlnet,
                scheduler=rc.make_scheduler(C.sched_config), safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)
            p.set_progress_bar_config(disable=True)
        else:
            p = rc.make_pipeline(u, C.enc, C.vae, rc.make_scheduler(C.sched_config))
        p.load_ip_adapter(folder, subfolder="", weight_name=weight_name, image_encoder_folder=None)
        return p

    # diffusers' attention processors after load_ip_adapter, and the image projection class
    p = sd_pipe(adir, "exp_adapter.bin")
    procs = {n: type(v).__name__ for n, v in p.unet.attn_processors.items()}
    proj_cls = type(p.unet.encoder_hid_proj.image_projection_layers[0]).__name__
    for o in order:
        pr = p.unet.attn_processors[o["layer"] + ".processor"]
        assert torch.equal(pr.to_k_ip[0].weight, adapter["ip_adapter"][f"{o['k']}.to_k_ip.weight"]), o
    p_mlp = sd_pipe(C.feat, "exp_adapter_mlp.bin")
    proj_cls_mlp = type(p_mlp.unet.encoder_hid_proj.image_projection_layers[0]).__name__

    # UNet outputs at t=500 (batch [uncond zeros, cond expression]) for both forms
    unet_outs = {}
    for kind, pp, ad, fname in (("linear", p, adapter, "exp_unet_out"), ("mlp", p_mlp, adapter_mlp, "exp_mlp_unet_out")):
        pp.set_ip_adapter_scale(1.0)
        with torch.no_grad():
            o = pp.unet(C.unet_sample, torch.tensor(500), encoder_hidden_states=C.unet_ehs,
                        added_cond_kwargs={"image_embeds": [embeds_cfg.clone()]}).sample.numpy()
        C.save(fname, o)
        u64, holder = own_ip_unet(C, ad, kind)
        holder["tokens"] = own_tokens(ad["image_proj"], torch.stack([torch.zeros(EXPR_DIM), expr]), kind)
        with torch.no_grad():
            o64 = u64(C.unet_sample.double(), torch.tensor(500), encoder_hidden_states=C.unet_ehs.double()).sample
        unet_outs[kind] = dict(file=fname + ".npy", change=std_change(o, C.base_out500), rel_err_vs_own_f64=rel_err(o, o64))
    log(f"  UNet outputs: {unet_outs}")

    # generations
    gens_out = {}
    u64_lin, holder = own_ip_unet(C, adapter, "linear")
    cases = [("expr1", 1.0, 3.0, False), ("expr05", 0.5, 3.0, False), ("expr_nocfg", 1.0, 1.0, False),
             ("expr_control", 1.0, 3.0, True)]
    from PIL import Image

    pil = Image.open(os.path.join(C.feat, "control.png")).convert("RGB")
    seen_embeds = []
    for case, s, guid, control in cases:
        pp = sd_pipe(adir, "exp_adapter.bin", control=control)
        pp.set_ip_adapter_scale(s)
        seen_embeds.clear()
        hk = pp.unet.encoder_hid_proj.register_forward_pre_hook(lambda mod, a: seen_embeds.append(a[0][0].clone()))
        n_calls = []
        hk2 = pp.unet.register_forward_pre_hook(lambda mod, a, kw: n_calls.append(a[0].shape[0]), with_kwargs=True)
        emb = embeds_cfg.clone() if guid > 1 else expr[None, None].clone()
        extra = dict(ip_adapter_image_embeds=[emb])
        if control:
            extra.update(image=pil, controlnet_conditioning_scale=1.0)
        lat, imgs, seen, raw = run_pipe(C, pp, 5, guid, latents=C.gen_noise, extra=extra, check_np=False)
        hk.remove()
        hk2.remove()
        exp_b = e_batch if guid > 1 else expr[None].repeat(2, 1)
        assert torch.equal(seen_embeds[0], exp_b[:, None]), seen_embeds[0].shape
        holder["scale"] = s
        eb = e_batch if guid > 1 else expr[None].repeat(2, 1)
        holder["tokens"] = own_tokens(adapter["image_proj"], eb, "linear")

        def extra_fn(x, t, i, cfg, control=control):
            if not control:
                return {}
            ehs = torch.cat([C.uncond64, C.uncond64, C.cond64, C.cond64]) if cfg else torch.cat([C.cond64, C.cond64])
            cc = torch.cat([C.ctrl] * x.shape[0]).double()
            with torch.no_grad():
                dd, mm = C.cn64(x, torch.tensor(t), encoder_hidden_states=ehs, controlnet_cond=cc,
                                conditioning_scale=1.0, return_dict=False)
            return dict(down_block_additional_residuals=dd, mid_block_additional_residual=mm)

        xi, g = x_init(C, C.gen_noise)
        x64 = manual_loop("dpmpp-2m", 5, guid, xi, g, unet_eps_fn(C, u64_lin, extra_fn))
        base_name = ("gen_control_s1_latents.npy" if control else
                     ("gen_cfg_latents.npy" if guid > 1 else "gen_nocfg_latents.npy"))
        base_lat = np.load(os.path.join(C.feat if control else C.ref_dir, base_name))
        gens_out[case] = gen_entry(
            C, case, lat, imgs, raw, seen, 5, guid, True, "dpmpp-2m", rel_err(lat, x64), ip_adapter_scale=s,
            ip_adapter_image_embeds_shape=list(emb.shape), unet_batch_per_step=n_calls[0],
            controlnet="models/controlnet, conditioning scale 1.0, image control.png" if control else None,
            change_vs_same_without_adapter=std_change(lat, base_lat) if os.path.exists(
                os.path.join(C.feat if control else C.ref_dir, base_name)) else None)

    patterns = [
        dict(test="'proj.weight' in image_proj (checked first)", cls="ImageProjection",
             keys="proj.weight (T*cross, D), proj.bias, norm.weight (cross), norm.bias",
             renamed="proj -> image_embeds", tokens="T = 4 fixed (cross = proj.weight.shape[0] // 4)",
             dims="image_embed_dim D = proj.weight.shape[-1]",
             forward="LayerNorm(reshape(Linear(e), (B, 4, cross)))"),
        dict(test="'proj.3.weight' in image_proj", cls="IPAdapterFullImageProjection",
             keys="proj.0.weight (D, D), proj.0.bias, proj.2.weight (cross, D), proj.2.bias, proj.3.weight (cross), "
                  "proj.3.bias", renamed="proj.0 -> ff.net.0.proj, proj.2 -> ff.net.2, proj.3 -> norm",
             dims="image_embed_dim D = proj.0.weight.shape[0] (FeedForward mult=1), cross = proj.3.weight.shape[0]",
             tokens="one token per input row: (B, n_images, D) -> (B, n_images, cross); the processor's "
                    "num_tokens = 257 is only used by the deprecated concatenated-tensor path",
             forward="LayerNorm(Linear2(GELU_erf(Linear0(e))))"),
        dict(test="'perceiver_resampler.proj_in.weight' in image_proj", cls="IPAdapterFaceIDPlusImageProjection",
             dims="id_embeddings_dim = proj.0.weight.shape[1], embed_dims = perceiver_resampler.proj_in.weight."
                  "shape[0], hidden_dims = ...proj_in.weight.shape[1], output_dims = ...proj_out.weight.shape[0], "
                  "heads = ...layers.0.0.to_q.weight.shape[0] // 64", tokens="4"),
        dict(test="'norm.weight' in image_proj (without proj.weight)", cls="IPAdapterFaceIDImageProjection",
             keys="proj.0.*, proj.2.*, norm.*", renamed="proj.0 -> ff.net.0.proj, proj.2 -> ff.net.2",
             dims="image_embed_dim = proj.0.weight.shape[1], mult = proj.0.weight.shape[0] // that, cross = "
                  "norm.weight.shape[0]", tokens="proj.2.weight.shape[0] // cross (attention processor assumes 4)"),
        dict(test="otherwise", cls="IPAdapterPlusImageProjection (Resampler)",
             dims="num_queries = latents.shape[1], hidden_dims = latents.shape[2], embed_dims = proj_in.weight."
                  "shape[1], output_dims = proj_out.weight.shape[0], heads = (layers.0.attn.to_q | layers.0.0.to_q)"
                  ".weight.shape[0] // 64", tokens="latents.shape[1]"),
    ]
    return dict(
        file="models/exp_adapter/exp_adapter.bin",
        format="torch.save (zip) of {'image_proj': {...}, 'ip_adapter': {...}}, float32 tensors",
        image_proj_keys={k: list(v.shape) for k, v in adapter["image_proj"].items()},
        ip_adapter_keys={k: list(v.shape) for k, v in adapter["ip_adapter"].items()},
        mlp_file="exp_adapter_mlp.bin",
        mlp_image_proj_keys={k: list(v.shape) for k, v in adapter_mlp["image_proj"].items()},
        diffusers_classes=dict(exp_adapter=proj_cls, exp_adapter_mlp=proj_cls_mlp),
        random_init=f"torch.Generator seed 700 (mlp: 800), in the order image_proj then k = 1, 3, ...: "
                    f"proj weights N(0, 1/55), biases N(0, 0.05^2), norm weights 1 + N(0, 0.1^2), norm biases "
                    f"N(0, 0.05^2); to_k_ip N(0, 1/cross) * 2; to_v_ip N(0, 1/cross) * v_gain (v_gain {v_gain:.4g}, "
                    f"mlp {v_gain_mlp:.4g}) sized so the UNet output changes by ~{EXPR_TARGET_CHANGE}",
        expression=dict(file="expression.npy", layout="55 float32 = 50 FLAME expression coefficients, 2 eyelids, 3 jaw",
                        recipe="torch.Generator seed 600: coeffs = randn(50) * 1.5, eyelids = rand(2), jaw = "
                               "[rand * 0.3, (rand * 2 - 1) * 0.2, (rand * 2 - 1) * 0.2]",
                        values=[round(float(v), 6) for v in expr]),
        processor_order=dict(
            rule="k = 1, 3, 5, ... over unet.attn_processors in its order, counting only the cross-attention "
                 "(attn2) layers; attn_processors walks named_children: down_blocks, then up_blocks, then "
                 "mid_block (mid block LAST; registration order in UNet2DConditionModel.__init__)",
            mapping=order,
            processors_after_load=sorted(set(procs.values())),
            attn1="self-attention processors keep their class (no ip weights)",
        ),
        attention="IPAdapterAttnProcessor2_0 on every attn2: h = SDPA(q, to_k(text), to_v(text)) + scale * "
                  "SDPA(q, to_k_ip(tokens), to_v_ip(tokens)) with the same heads/head_dim, then to_out; "
                  "to_k_ip/to_v_ip: Linear(cross, hidden, bias=False); scale 0 skips the ip branch; the ip "
                  "tokens are NOT concatenated with the text tokens (separate softmax)",
        ip_adapter_image_embeds=dict(
            with_cfg="a list with one tensor per adapter, shape (2, 1, 55) = [zeros(1, 1, 55); expression(1, 1, 55)] "
                     "(negative first: the pipeline does .chunk(2)), repeated per image by the pipeline to (4, 1, 55) "
                     "= [zero, zero, expr, expr] matching the [uncond, uncond, cond, cond] UNet batch",
            without_cfg="shape (1, 1, 55) = expression only; repeated to (2, 1, 55); guidance <= 1 runs ONE UNet "
                        "call per step on the conditional batch (2) with the adapter applied (checked: UNet batch "
                        "2 and encoder_hid_proj input = expression x 2)",
            projection="UNet: image_embeds -> encoder_hid_proj (MultiIPAdapterImageProjection): reshape (B*n, 55) "
                       "-> ImageProjection -> (B, n, 4, cross); the zeros row gives tokens LayerNorm(proj.bias) (not "
                       "zero tokens): the unconditional half also gets an ip contribution",
        ),
        set_ip_adapter_scale="pipe.set_ip_adapter_scale(s): every IPAdapterAttnProcessor.scale = [s]",
        image_proj_patterns=patterns,
        unet_outputs=dict(
            recipe="pipe.load_ip_adapter(folder, subfolder='', weight_name=..., image_encoder_folder=None); "
                   "set_ip_adapter_scale(1.0); pipe.unet(reference/unet_sample.npy, 500, encoder_hidden_states="
                   "reference/unet_encoder_hidden_states.npy, added_cond_kwargs={'image_embeds': [(2, 1, 55) = "
                   "[zeros, expression]]}).sample (batch 2 = [uncond, cond]); exp_unet_out.npy: exp_adapter.bin, "
                   "exp_mlp_unet_out.npy: exp_adapter_mlp.bin",
            **unet_outs),
        generations=gens_out,
        generation_recipe="pipe.load_ip_adapter(models/exp_adapter, subfolder='', weight_name='exp_adapter.bin', "
                          "image_encoder_folder=None); pipe.set_ip_adapter_scale(s); pipe(..., latents=gen_noise, "
                          "5 steps, DPM++ 2M, ip_adapter_image_embeds=[E]); expr_control: "
                          "StableDiffusionControlNetPipeline with the adapter loaded into its UNet, image=control.png, "
                          "controlnet_conditioning_scale 1.0. Independent check: float64 UNet with own decoupled "
                          "attention processors and own float64 image projection",
    )


# ============================================================================ CLI cases


def cli_cases(C, P):
    """Cases for tools/check_generate.py: the CLI flags and the reference files of each."""
    cases = {}

    def add(name, entry, flags, seed_flag):
        cases[name] = dict(
            latents="features/" + entry["latents"], images="features/" + entry["images"],
            noise=entry["noise"], seed=SEED if (entry["noise"] is None or seed_flag) else None,
            steps=entry["steps"], guidance=entry["guidance"], num_images=2, size=C.size, flags=flags)

    if "samplers" in P:
        for name in SAMPLER_NAMES:
            g = P["samplers"]["generations"]
            for case, e in g.items():
                if e["sampler"] != name:
                    continue
                add(case, e, ["--scheduler", name], name in STOCHASTIC)
    if "lora" in P:
        add("lora06", P["lora"]["generation"], ["--lora", "{ref}/features/lora/kohya_diffusers.safetensors:0.6"], False)
    if "fast" in P:
        add("fast", P["fast"]["generations"]["fast"], ["--fast"], False)
        cases["fast"]["omit"] = ["--steps", "--guidance"]
        add("lcm2", P["fast"]["generations"]["fast_2"], ["--fast"], False)
        cases["lcm2"]["omit"] = ["--guidance"]
    if "controlnet" in P:
        g = P["controlnet"]["generations"]
        for name, case in (("control", "control_s1"), ("control_s05", "control_s05"),
                           ("control_nocfg", "control_nocfg"), ("control_window", "control_window"),
                           ("control_seed", "control_seed")):
            e = g[case]
            fl = ["--pose-image", "{ref}/features/control.png", "--controlnet-scale",
                  repr(float(e["controlnet_conditioning_scale"]))]
            if e["control_guidance_start"] != 0.0 or e["control_guidance_end"] != 1.0:
                fl += ["--control-start", repr(e["control_guidance_start"]), "--control-end",
                       repr(e["control_guidance_end"])]
            add(name, e, fl, False)
    if "expression" in P:
        g = P["expression"]["generations"]
        for case, e in g.items():
            fl = ["--expression", "{ref}/features/expression.npy", "--expression-scale", repr(float(e["ip_adapter_scale"]))]
            if e.get("controlnet"):
                fl += ["--pose-image", "{ref}/features/control.png", "--controlnet-scale", "1.0"]
            add(case, e, fl, False)
    return dict(
        note="tools/check_generate.py runs: BIN generate --models DIR/models --embedding reference/id_embedding.npy "
             "[--noise reference/<noise>] [--seed S] --num-images 2 --steps N --guidance G --size PX --out TMP "
             "--latents-out TMP/lat.npy + flags ({ref} = DIR/reference), leaving out the flags in 'omit'; "
             "paths of latents/images are relative to DIR/reference. --seed is also given with --noise for euler-a "
             "and lcm (the per-image generators then feed only the step noise)",
        cases=cases,
    )


if __name__ == "__main__":
    main()
