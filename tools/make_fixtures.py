#!/usr/bin/env python3
"""Generate the reference fixtures for Arc2Face Studio's Rust parity tests.

    /work/pyref/bin/python tools/make_fixtures.py --out DIR [--seed N] [--variant a|b] [--full-size]

Writes DIR/models/ (laid out like the real models folder, RECIPE.md "Models folder") with randomly
initialised tiny models, and DIR/reference/*.npy computed with diffusers/transformers on CPU in
float32 (RECIPE.md "Identity encoder", "Sampling"). `--out tests/fixtures/tiny` (the default for variant a) regenerates the
committed fixture. Variant b is a differently shaped model for the unseen-model check
(tools/check_generate.py); never commit it. `--full-size` writes SD1.5-sized random models for
benchmarks and no reference outputs.

Weights: normal with std 1/sqrt(fan_in) (linear/conv), biases N(0, 0.05^2), norm weights
1 + 0.1 N(0,1), norm biases N(0, 0.05^2), embeddings N(0, 0.2^2); attention query projections are
multiplied by Q_GAIN so softmaxes are clearly non-uniform; the UNet conv_out is rescaled so its
output on unit inputs has std 1 and the VAE decoder conv_out so a decode of unit latents has std
VAE_TARGET_STD (0.5: decoded images then rarely clamp, which would hide errors).

All outputs are deterministic for a given seed and package versions.
"""

import argparse
import copy
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
import ref_common as rc  # noqa: E402

Q_GAIN = 2.0
VAE_TARGET_STD = 0.5
UNET_TARGET_STD = 1.0

UNET_DOWN3 = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
UNET_UP3 = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")

VARIANTS = {
    # Committed fixture. Channel widths are small so the whole folder stays ~4 MB
    # (a (32, 64, 64) UNet alone would be 8.7 MB in fp32).
    "a": dict(
        seed=0,
        unet=dict(
            block_out_channels=(8, 16, 16),
            down_block_types=UNET_DOWN3,
            up_block_types=UNET_UP3,
            layers_per_block=2,
            attention_head_dim=2,  # SD1.5 quirk: this is the NUMBER of heads
            norm_num_groups=4,
            sample_size=16,
        ),
        enc=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        id_dim=24,
        vae=dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, scaling_factor=0.3),
        enc_store=torch.float16,
    ),
    # Unseen-model check only. Differs in every dimension from a, uses a per-block head list
    # (mid block = last entry, up blocks reversed) and a 3-level VAE (scale factor 4).
    "b": dict(
        seed=1,
        unet=dict(
            block_out_channels=(16, 24, 32),
            down_block_types=UNET_DOWN3,
            up_block_types=UNET_UP3,
            layers_per_block=2,
            attention_head_dim=[2, 4, 8],
            norm_num_groups=8,
            sample_size=8,
        ),
        enc=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6),
        id_dim=40,
        vae=dict(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4, scaling_factor=0.25),
        enc_store=torch.float16,
    ),
    # SD1.5 architecture, random weights, benchmarks only.
    "full": dict(
        seed=0,
        unet=dict(
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=2,
            attention_head_dim=8,
            norm_num_groups=32,
            sample_size=64,
        ),
        enc=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        id_dim=512,
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, scaling_factor=0.18215),
        enc_store=torch.float32,
    ),
}


def log(*a):
    print(*a, flush=True)


# ----------------------------------------------------------------------------- models


def build_unet(cfg, cross_dim):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=cfg["sample_size"],
        in_channels=4,
        out_channels=4,
        down_block_types=cfg["down_block_types"],
        up_block_types=cfg["up_block_types"],
        block_out_channels=cfg["block_out_channels"],
        layers_per_block=cfg["layers_per_block"],
        attention_head_dim=cfg["attention_head_dim"],
        norm_num_groups=cfg["norm_num_groups"],
        norm_eps=1e-5,
        cross_attention_dim=cross_dim,
        use_linear_projection=False,
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
        downsample_padding=1,
        center_input_sample=False,
        mid_block_scale_factor=1,
    )


def build_encoder(cfg):
    from transformers import CLIPTextConfig, CLIPTextModel

    conf = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=cfg["hidden_size"],
    )
    conf.architectures = ["CLIPTextModel"]
    return CLIPTextModel(conf)


def build_vae(cfg, image_size):
    from diffusers import AutoencoderKL

    n = len(cfg["block_out_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg["block_out_channels"],
        layers_per_block=cfg["layers_per_block"],
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=cfg["norm_num_groups"],
        sample_size=image_size,
        scaling_factor=cfg["scaling_factor"],
    )


@torch.no_grad()
def init_weights(model, emb_std=0.2):
    """Unit-scale random init; every parameter must be covered."""
    done = set()
    for _, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            m.weight.normal_(0.0, fan_in**-0.5)
            done.add(id(m.weight))
            if m.bias is not None:
                m.bias.normal_(0.0, 0.05)
                done.add(id(m.bias))
        elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            if m.weight is not None:
                m.weight.normal_(0.0, 0.1).add_(1.0)
                done.add(id(m.weight))
            if m.bias is not None:
                m.bias.normal_(0.0, 0.05)
                done.add(id(m.bias))
        elif isinstance(m, nn.Embedding):
            m.weight.normal_(0.0, emb_std)
            done.add(id(m.weight))
    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    assert not missed, f"parameters not initialised: {missed[:5]}"
    # sharpen attention: scale query projections
    for name, p in model.named_parameters():
        if name.endswith("to_q.weight") or name.endswith("q_proj.weight"):
            p.mul_(Q_GAIN)


# ----------------------------------------------------------------------------- attention stats


class AttnStats:
    """Records normalised softmax entropy (1 = uniform) and mean max-probability of attention calls."""

    def __init__(self):
        self.rows = []  # (kind, norm_entropy, maxp, n_keys)
        self.handles = []

    def hook_diffusers(self, model, kind):
        from diffusers.models.attention_processor import Attention

        for _, m in model.named_modules():
            if isinstance(m, Attention):
                self.handles.append(m.register_forward_pre_hook(self._diff_hook(m, kind), with_kwargs=True))

    def hook_clip(self, model):
        from transformers.models.clip.modeling_clip import CLIPAttention

        for _, m in model.named_modules():
            if isinstance(m, CLIPAttention):
                self.handles.append(m.register_forward_pre_hook(self._clip_hook(m), with_kwargs=True))

    def _record(self, kind, p, valid=None):
        ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
        n = valid if valid is not None else torch.full_like(ent, p.shape[-1])
        keep = n > 1
        ne = (ent[..., keep] / torch.log(n[keep])).mean().item() if valid is not None else (ent / math.log(p.shape[-1])).mean().item()
        self.rows.append((kind, ne, p.max(-1).values.mean().item(), p.shape[-1]))

    def _diff_hook(self, attn, kind):
        def hook(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            ctx = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            with torch.no_grad():
                if x.ndim == 4:
                    b, c, h, w = x.shape
                    x = x.view(b, c, h * w).transpose(1, 2)
                if attn.group_norm is not None:
                    x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
                c_ = x if ctx is None else ctx
                q, k = attn.to_q(x), attn.to_k(c_)
                hd = q.shape[-1] // attn.heads
                q = q.view(q.shape[0], -1, attn.heads, hd).transpose(1, 2)
                k = k.view(k.shape[0], -1, attn.heads, hd).transpose(1, 2)
                p = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, -1)
                self._record(kind + ("-cross" if ctx is not None else "-self"), p)

        return hook

    def _clip_hook(self, attn):
        def hook(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            with torch.no_grad():
                b, L, _ = x.shape
                q = attn.q_proj(x).view(b, L, attn.num_heads, attn.head_dim).transpose(1, 2)
                k = attn.k_proj(x).view(b, L, attn.num_heads, attn.head_dim).transpose(1, 2)
                s = q @ k.transpose(-1, -2) * attn.scale
                s = s.masked_fill(torch.triu(torch.ones(L, L, dtype=torch.bool), 1), float("-inf"))
                p = torch.softmax(s, -1)
                self._record("clip-causal", p, valid=torch.arange(1, L + 1, dtype=torch.float32))

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def summary(self):
        out = {}
        for kind in sorted({r[0] for r in self.rows}):
            rs = [r for r in self.rows if r[0] == kind]
            out[kind] = dict(
                calls=len(rs),
                norm_entropy=round(float(np.mean([r[1] for r in rs])), 3),
                mean_max_prob=round(float(np.mean([r[2] for r in rs])), 3),
                uniform_prob=round(float(np.mean([1.0 / r[3] for r in rs])), 4),
            )
        return out


# ----------------------------------------------------------------------------- RECIPE.md "Sampling" re-implementation (f64)


def design_schedule(n):
    """Timesteps and sigmas per RECIPE.md "Sampling", in float64 (numpy round = half to even)."""
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas)
    ts = np.round(np.linspace(0, 999, n + 1))[::-1][:-1].astype(np.int64)
    sig = np.sqrt((1 - ac[ts]) / ac[ts])
    return ts, np.concatenate([sig, [0.0]])


def design_dpmpp(x, n, eps_fn):
    """DPM-Solver++ 2M as RECIPE.md "Sampling" writes it; x float64 torch tensor; eps_fn(x, t) -> eps."""
    ts, sig = design_schedule(n)
    alpha = 1.0 / np.sqrt(sig**2 + 1.0)
    s = sig * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(s)
    prev_x0 = None
    for i, t in enumerate(ts):
        eps = eps_fn(x, int(t))
        x0 = (x - s[i] * eps) / alpha[i]
        h = lam[i + 1] - lam[i]
        em1 = math.exp(-h) - 1.0  # e^{-h} - 1 (h = +inf at the final sigma 0 -> -1)
        ratio = s[i + 1] / s[i]
        if i == 0 or i == n - 1:
            x = ratio * x - alpha[i + 1] * em1 * x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            d1 = (x0 - prev_x0) / r
            x = ratio * x - alpha[i + 1] * em1 * x0 - 0.5 * alpha[i + 1] * em1 * d1
        prev_x0 = x0
    return x


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# ----------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="output folder (default for variant a: tests/fixtures/tiny)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--variant", choices=["a", "b"], default="a")
    ap.add_argument("--full-size", action="store_true", help="SD1.5-sized random models, no references")
    args = ap.parse_args()

    vname = "full" if args.full_size else args.variant
    V = VARIANTS[vname]
    seed = V["seed"] if args.seed is None else args.seed
    if args.out is None:
        if vname != "a":
            ap.error("--out is required for variant b and --full-size")
        args.out = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "tiny")
    out = os.path.abspath(args.out)
    models_dir = os.path.join(out, "models")
    ref_dir = os.path.join(out, "reference")
    for d in (models_dir, ref_dir):
        if os.path.isdir(d):
            shutil.rmtree(d)
    os.makedirs(models_dir)

    t_start = time.time()
    torch.manual_seed(seed)
    import diffusers
    import transformers

    log(f"variant {vname}, seed {seed}; torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, numpy {np.__version__}")

    hidden = V["enc"]["hidden_size"]
    D = V["id_dim"]
    enc = build_encoder(V["enc"]).eval()
    unet = build_unet(V["unet"], hidden).eval()
    vae = build_vae(V["vae"], V["unet"]["sample_size"] * 2 ** (len(V["vae"]["block_out_channels"]) - 1)).eval()
    init_weights(enc)
    init_weights(unet)
    init_weights(vae)
    if V["enc_store"] == torch.float16:
        # round to f16-representable values BEFORE any reference: the f32 reference then equals what a
        # loader computes after upcasting the f16 file.
        with torch.no_grad():
            for p in enc.parameters():
                p.data = p.data.half().float()
    log(f"built in {time.time() - t_start:.1f}s: unet {sum(p.numel() for p in unet.parameters()):,} params, "
        f"encoder {sum(p.numel() for p in enc.parameters()):,}, vae {sum(p.numel() for p in vae.parameters()):,}")

    # ---- calibration of output scales (cheap forwards)
    g_ref = torch.Generator("cpu").manual_seed(seed + 1000)  # all reference inputs come from here, in order
    id_vec = (torch.randn(D, generator=g_ref) * 20.0).float()
    cond = rc.encode_identity(enc, id_vec)
    uncond = rc.encode_uncond(enc)
    ehs = torch.cat([uncond, cond])
    ss = V["unet"]["sample_size"]
    cs = min(ss, 16)  # calibration size (8x8 for the full-size model keeps it cheap)
    g_cal = torch.Generator("cpu").manual_seed(seed + 2000)
    with torch.no_grad():
        x_cal = torch.randn((2, 4, cs, cs), generator=g_cal)
        o = unet(x_cal, torch.tensor(500), encoder_hidden_states=ehs).sample
        f = UNET_TARGET_STD / o.std().item()
        unet.conv_out.weight.mul_(f)
        unet.conv_out.bias.mul_(f)
        log(f"unet raw output std {o.std().item():.4g} -> conv_out scaled by {f:.4g}")
        z_cal = torch.randn((1, 4, cs, cs), generator=g_cal)
        o = vae.decode(z_cal).sample
        f = VAE_TARGET_STD / o.std().item()
        vae.decoder.conv_out.weight.mul_(f)
        vae.decoder.conv_out.bias.mul_(f)
        log(f"vae raw decode std {o.std().item():.4g} -> decoder.conv_out scaled by {f:.4g}")

    # ---- write the models folder
    unet.save_pretrained(os.path.join(models_dir, "arc2face"), safe_serialization=True)
    vae.save_pretrained(os.path.join(models_dir, "vae"), safe_serialization=True)
    sd = rc.save_encoder(enc, os.path.join(models_dir, "encoder"), V["enc_store"])
    os.makedirs(os.path.join(models_dir, "scheduler"))
    with open(os.path.join(models_dir, "scheduler", "scheduler_config.json"), "w") as fh:
        json.dump(rc.PNDM_SCHEDULER_CONFIG, fh, indent=2)
        fh.write("\n")
    log(f"encoder pickle: {len(sd)} tensors, {sorted({str(v.dtype) for v in sd.values()})}, "
        f"e.g. {next(iter(sd))}; position_ids not stored")
    log(f"models written in {time.time() - t_start:.1f}s")

    if vname == "full":
        log_sizes(models_dir)
        log(f"done (full-size: no reference outputs) in {time.time() - t_start:.1f}s")
        return

    # ---- reload from disk: every reference below is computed from exactly what was written
    unet2, enc2, vae2, sched = rc.load_models(models_dir)
    for a, b, name in ((unet, unet2, "unet"), (enc, enc2, "encoder"), (vae, vae2, "vae")):
        sa, sb = a.state_dict(), b.state_dict()
        sa = {k: v for k, v in sa.items() if not k.endswith("position_ids")}
        sb = {k: v for k, v in sb.items() if not k.endswith("position_ids")}
        assert sa.keys() == sb.keys(), name
        for k in sa:
            assert sb[k].dtype == torch.float32 and torch.equal(sa[k], sb[k]), (name, k)
    unet, enc, vae = unet2, enc2, vae2
    assert type(sched).__name__ == "DPMSolverMultistepScheduler"
    log("reloaded models match the in-memory ones exactly")

    os.makedirs(ref_dir)
    R = {}

    def save(name, arr, dtype=np.float32):
        arr = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
        arr = np.ascontiguousarray(arr.astype(dtype, copy=False))
        np.save(os.path.join(ref_dir, name + ".npy"), arr)
        R[name] = arr
        return arr

    params = dict(
        variant=vname,
        seed=seed,
        versions=dict(torch=torch.__version__, diffusers=diffusers.__version__,
                      transformers=transformers.__version__, numpy=np.__version__),
        models=dict(
            unet=dict(V["unet"], cross_attention_dim=hidden),
            encoder=dict(V["enc"], vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu",
                         stored_dtype=str(V["enc_store"]).replace("torch.", "")),
            vae=dict(V["vae"], scale_factor=2 ** (len(V["vae"]["block_out_channels"]) - 1)),
            id_dim=D,
            default_image_size=ss * 2 ** (len(V["vae"]["block_out_channels"]) - 1),
        ),
        init=dict(q_gain=Q_GAIN, unet_target_std=UNET_TARGET_STD, vae_target_std=VAE_TARGET_STD),
    )

    # ---- 1. scheduler
    sched_info = {}
    for n in (1, 2, 5, 6, 25, 50):
        s = rc.make_scheduler()
        s.set_timesteps(n)
        save(f"scheduler_{n}_timesteps", s.timesteps, np.int64)
        save(f"scheduler_{n}_sigmas", s.sigmas.double(), np.float64)
        ts, sig = design_schedule(n)
        assert np.array_equal(ts, s.timesteps.numpy()), (n, ts, s.timesteps)
        sched_info[n] = dict(timesteps=s.timesteps.tolist(), sigma_rel_err_vs_f64=rel_err(s.sigmas.numpy(), sig))
    log("scheduler timesteps  6:", sched_info[6]["timesteps"], " 25:", sched_info[25]["timesteps"][:3], "...",
        sched_info[25]["timesteps"][-2:])
    log("diffusers sigmas (float32, f32 cumprod) vs f64 recipe formula, max rel err:",
        max(v["sigma_rel_err_vs_f64"] for v in sched_info.values()))
    save("scheduler_alphas_cumprod", rc.make_scheduler().alphas_cumprod)

    # Step trace with a formula "model". Repeat exactly in Rust:
    #   x = scheduler_trace_x.npy (float32, shape (1,4,4,4))
    #   for t in timesteps(N):                   # t: the integer timestep
    #       eps = sin(x) * 0.5 + t / 1000.0      # computed in float32, elementwise
    #       x = dpmpp_step(eps, t, x)            # diffusers DPMSolverMultistepScheduler.step
    #   scheduler_N_trace.npy = x (float32)
    TRACE_FORMULA = "eps = sin(x) * 0.5 + t / 1000.0  (float32; t = integer timestep)"
    x_tr = save("scheduler_trace_x", torch.randn((1, 4, 4, 4), generator=torch.Generator("cpu").manual_seed(0)))
    trace_err = {}
    for n in (1, 2, 5, 25):
        s = rc.make_scheduler()
        s.set_timesteps(n)
        x = torch.from_numpy(x_tr.copy())
        for t in s.timesteps:
            eps = torch.sin(x) * 0.5 + int(t) / 1000.0
            x = s.step(eps, t, x).prev_sample
        assert x.dtype == torch.float32
        save(f"scheduler_{n}_trace", x)
        xd = design_dpmpp(torch.from_numpy(x_tr.copy()).double(), n,
                          lambda xx, t: torch.sin(xx) * 0.5 + t / 1000.0)
        trace_err[n] = rel_err(x, xd)
    log("scheduler trace: diffusers f32 vs the recipe's f64 re-implementation, rel err:",
        {k: f"{v:.2e}" for k, v in trace_err.items()})

    # ---- 2. noise
    for S in (0, 1, 42, 2147483647):
        save(f"noise_seed_{S}", torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(S)))
    save("noise_seed_7_shape_1x4x3x3", torch.randn((1, 4, 3, 3), generator=torch.Generator("cpu").manual_seed(7)))
    save("noise_seed_123_shape_1x4x64x64",
         torch.randn((1, 4, 64, 64), generator=torch.Generator("cpu").manual_seed(123)))

    # ---- 3. identity encoder
    save("id_embedding", id_vec)
    # the manual path (token embeddings -> embeddings(inputs_embeds) -> causal encoder -> final LN)
    # must equal the model's own forward when no row is replaced
    with torch.no_grad():
        for ids in (rc.COND_IDS, rc.UNCOND_IDS):
            ref = enc(input_ids=torch.tensor([ids])).last_hidden_state
            man = rc.encode_ids_manual(enc, ids)
            assert torch.equal(ref, man), ("manual encoder path differs", (ref - man).abs().max())
        # causality: changing token 5 must not change rows 0..4
        ids2 = list(rc.COND_IDS)
        ids2[5] = 1000
        a = enc(input_ids=torch.tensor([rc.COND_IDS])).last_hidden_state
        b = enc(input_ids=torch.tensor([ids2])).last_hidden_state
        assert torch.equal(a[:, :5], b[:, :5]) and not torch.equal(a[:, 5:], b[:, 5:]), "encoder not causal"
    stats = AttnStats()
    stats.hook_clip(enc)
    cond = rc.encode_identity(enc, id_vec)
    uncond = rc.encode_uncond(enc)
    stats.remove()
    # independent check of the replacement: a hook on the token embedding inside model(input_ids)
    row = rc.id_row(id_vec, hidden)

    def tok_hook(mod, inp, outp):
        outp = outp.clone()
        outp[:, rc.ID_POS] = row
        return outp

    h = rc.text_transformer(enc).embeddings.token_embedding.register_forward_hook(tok_hook)
    with torch.no_grad():
        cond_hook = enc(input_ids=torch.tensor([rc.COND_IDS])).last_hidden_state
    h.remove()
    assert torch.equal(cond_hook, cond), (cond_hook - cond).abs().max()
    save("encoder_cond", cond)
    save("encoder_uncond", uncond)
    log(f"encoder: cond std {cond.std():.3f}, uncond std {uncond.std():.3f}, "
        f"|cond-uncond| mean {(cond - uncond).abs().mean():.3f}; manual path == model(input_ids) exactly")

    # ---- 4. UNet forward
    ehs = torch.cat([uncond, cond])
    stats.hook_diffusers(unet, "unet")
    with torch.no_grad():
        x = save("unet_sample", torch.randn((2, 4, ss, ss), generator=g_ref))
        x = torch.from_numpy(x)
        save("unet_encoder_hidden_states", ehs)
        o999 = save("unet_out_t999", unet(x, torch.tensor(999), encoder_hidden_states=ehs).sample)
        o500 = save("unet_out_t500", unet(x, torch.tensor(500), encoder_hidden_states=ehs).sample)
        o_cc = unet(x, torch.tensor(500), encoder_hidden_states=torch.cat([cond, cond])).sample.numpy()
    stats.remove()
    log(f"unet out std t999 {o999.std():.3f}, t500 {o500.std():.3f}, max|.| {np.abs(o500).max():.2f}; "
        f"std(t999-t500) {(o999 - o500).std():.3f}; std(out[uncond]-out[cond]) at t500 "
        f"{(o500[0] - o_cc[0]).std():.3f}")

    # ---- 5. VAE decode
    stats.hook_diffusers(vae, "vae")
    with torch.no_grad():
        z = save("vae_latents", torch.randn((1, 4, ss, ss), generator=g_ref))
        dec = save("vae_decoded", vae.decode(torch.from_numpy(z)).sample)
    stats.remove()
    log(f"vae decoded {dec.shape} std {dec.std():.3f}, max|.| {np.abs(dec).max():.2f}")
    attn_summary = stats.summary()
    for k, v in attn_summary.items():
        log(f"attention {k}: {v}")

    # ---- 6. whole generations through StableDiffusionPipeline
    pipe = rc.make_pipeline(unet, enc, vae, rc.make_scheduler(json.load(open(os.path.join(models_dir, "scheduler", "scheduler_config.json")))))
    size = params["models"]["default_image_size"]
    lat = size // params["models"]["vae"]["scale_factor"]
    gen_noise = save("gen_noise", torch.randn((2, 4, lat, lat), generator=g_ref))

    def run(name, steps, guidance, latents=None, seed_=None):
        seen = []

        def cb(p, i, t, kw):
            seen.append(int(t))
            return kw

        kwargs = dict(latents=torch.from_numpy(latents.copy())) if latents is not None else dict(
            generator=[torch.Generator("cpu").manual_seed(seed_ + i) for i in range(2)])
        with torch.no_grad():
            res = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_images_per_prompt=2,
                       height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                       output_type="latent", callback_on_step_end=cb, **kwargs)
            latents_out = res.images
            raw, imgs = rc.decode_images(vae, latents_out)
            # diffusers' own post-processing must agree
            res_np = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_images_per_prompt=2,
                          height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                          output_type="np", **(dict(latents=torch.from_numpy(latents.copy())) if latents is not None
                                                 else dict(generator=[torch.Generator("cpu").manual_seed(seed_ + i)
                                                                      for i in range(2)])))
        np_imgs = (res_np.images * 255).round().astype(np.uint8)
        assert np.abs(np_imgs.astype(int) - imgs.astype(int)).max() <= 1
        exp = sched_info.get(steps, {}).get("timesteps") or design_schedule(steps)[0].tolist()
        assert seen == exp, (seen, exp)
        assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
        la = save(f"gen_{name}_latents", latents_out)
        save(f"gen_{name}_images", imgs, np.uint8)
        clamped = float(((raw < -1) | (raw > 1)).float().mean())
        # independent f64 re-implementation (the recipe's formulas + double-precision models)
        u64, e_c, e_u = unet64, cond.double(), uncond.double()
        if latents is not None:
            x0 = torch.from_numpy(latents.copy()).double()
        else:
            x0 = torch.cat([torch.randn((1, 4, lat, lat), generator=torch.Generator("cpu").manual_seed(seed_ + i))
                            for i in range(2)]).double()
            save(f"gen_{name}_noise", x0)

        def eps_fn(xx, t):
            tt = torch.tensor(t)
            if guidance > 1:
                e = u64(torch.cat([xx, xx]), tt, encoder_hidden_states=torch.cat([e_u, e_u, e_c, e_c])).sample
                eu, ec = e.chunk(2)
                return eu + guidance * (ec - eu)
            return u64(xx, tt, encoder_hidden_states=torch.cat([e_c, e_c])).sample

        with torch.no_grad():
            x64 = design_dpmpp(x0, steps, eps_fn)
        err64 = rel_err(la, x64)
        log(f"gen {name}: steps {steps} guidance {guidance} timesteps {seen}; latents std {la.std():.3f} "
            f"max|.| {np.abs(la).max():.2f}; decoded std {raw.std():.3f}, clamped {clamped:.1%}; "
            f"image mean {imgs.mean():.1f}; rel err vs f64 recipe loop {err64:.2e}")
        return dict(steps=steps, guidance=guidance, seed=seed_, noise="gen_noise.npy" if latents is not None else
                    f"per-image generator manual_seed(seed + i); noise saved as gen_{name}_noise.npy",
                    num_images=2, size=size, latent_size=lat, timesteps=seen,
                    rel_err_f32_vs_f64=err64, clamped_fraction=clamped)

    unet64 = copy.deepcopy(unet).double()
    gens = {
        "cfg": run("cfg", 5, 3.0, latents=gen_noise),
        "nocfg": run("nocfg", 5, 1.0, latents=gen_noise),
        "seed": run("seed", 4, 3.0, seed_=42),
    }

    params.update(
        generations=gens,
        scheduler=dict(config=rc.PNDM_SCHEDULER_CONFIG, built_as="DPMSolverMultistepScheduler.from_config(pndm_config)",
                       timesteps={str(k): v["timesteps"] for k, v in sched_info.items()},
                       trace_formula=TRACE_FORMULA, trace_steps=[1, 2, 5, 25],
                       trace_rel_err_vs_f64={str(k): v for k, v in trace_err.items()},
                       sigmas_note="scheduler.sigmas are float32 in diffusers (alphas_cumprod is a float32 cumprod); "
                                   "saved as float64 of those float32 values"),
        encoder=dict(cond_ids=rc.COND_IDS, uncond_ids=rc.UNCOND_IDS, id_position=rc.ID_POS,
                     id_embedding="raw (not normalised), N(0,1)*20"),
        unet_forward=dict(timesteps=[999, 500], encoder_hidden_states="cat([encoder_uncond, encoder_cond])"),
        vae_decode=dict(note="vae_latents is the decoder input (already divided by scaling_factor)"),
        magnitudes=dict(unet_out_std_t500=float(o500.std()), unet_out_std_t999=float(o999.std()),
                        vae_decoded_std=float(dec.std()), encoder_cond_std=float(cond.std())),
        attention=attn_summary,
    )
    with open(os.path.join(ref_dir, "params.json"), "w") as fh:
        json.dump(params, fh, indent=1)
        fh.write("\n")
    log_sizes(out)
    log(f"done in {time.time() - t_start:.1f}s")


def log_sizes(root):
    total = 0
    for dp, _, fns in sorted(os.walk(root)):
        for fn in sorted(fns):
            total += os.path.getsize(os.path.join(dp, fn))
    big = []
    for dp, _, fns in os.walk(root):
        for fn in fns:
            p = os.path.join(dp, fn)
            big.append((os.path.getsize(p), os.path.relpath(p, root)))
    big.sort(reverse=True)
    log(f"{root}: {total / 1e6:.2f} MB in {len(big)} files; largest: " +
        ", ".join(f"{n} {s / 1e6:.2f} MB" for s, n in big[:4]))


if __name__ == "__main__":
    main()
