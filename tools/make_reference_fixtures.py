#!/usr/bin/env python3
"""Reference models and outputs for the Reference Adapter ("keep the photo's look"), the second mode of
Arc2Face's official expression demo (foivospar/Arc2Face: gradio_demo/app_exp_adapter.py generate_image,
arc2face/ref_adapter.py ReferenceAdapter), computed with diffusers on CPU in float32.

    /work/pyref/bin/python tools/make_feature_fixtures.py --fixture tests/fixtures/tiny      (first)
    /work/pyref/bin/python tools/make_reference_fixtures.py --fixture tests/fixtures/tiny
    /work/pyref/bin/python tools/make_reference_fixtures.py --fixture /tmp/fixture_b

DIR (--fixture) is a fixture root written by tools/make_fixtures.py and then tools/make_feature_fixtures.py
(this tool reads its Expression Adapter and expression). make_feature_fixtures.py rewrites
DIR/reference/features/ entirely, so run this tool after it. It writes only:

    DIR/models/ref_adapter/pytorch_lora_weights.safetensors   the reference LoRA (PEFT keys, no metadata)
    DIR/reference/features/ref/...                            npy references, the reference image
    DIR/reference/features/ref/params.json                    every case, precisely

and removes those two paths first when they exist; every other file under DIR is checked by sha256 to be
unchanged at the end.

The mechanism, as the official code runs it: a second, plain Arc2Face UNet (no LoRA, no Expression Adapter)
runs ONCE per job on the VAE latents of the FFHQ-aligned input photo at timestep 0 with the identity context,
and every BasicTransformerBlock stores the input of its self-attention (the norm1 output) in a bank. The
denoising UNet (with the LoRA at the user's scale) then lets the conditional half of its batch attend to
[own tokens, bank tokens] in every self-attention (keys/values from the concatenation, queries from its own
tokens); the unconditional half is unchanged.

Three routes, compared in params.json: (A) diffusers pipelines with the LoRA loaded by load_lora_weights and
attention-processor wrappers that record / read the bank (the references); (B) an independent float64
re-implementation (LoRA fused by hand, explicit-softmax attention, bank taken by forward hooks on norm1,
float64 VAE, own decoupled cross-attention for the Expression Adapter, float64 DPM++ 2M); and, when
--official-ref-adapter PATH names a copy of the official arc2face/ref_adapter.py (not part of this
repository), (O) the official ReferenceAdapter class wired exactly as the demo wires it.
"""

import argparse
import copy
import importlib.util
import json
import math
import os
import shutil
import sys
import time
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_feature_fixtures as mff  # noqa: E402  (samplers, LoRA helpers, own IP-Adapter attention, gen helpers)
import make_fixtures as mf  # noqa: E402
import ref_common as rc  # noqa: E402

rel_err = mf.rel_err
std_change = mff.std_change
log = mff.log

REF_SCALE = 0.8  # the demo's default Reference Adapter scale (slider 0..1)
REF_LORA_RANK = 4
REF_LORA_SEED = 900
REF_LORA_TARGET_CHANGE = 0.15  # std change of a UNet call at scale REF_SCALE (LoRA alone, no bank)
REF_IMAGE_SEED = 950
ATTN_SUFFIXES = (".to_q", ".to_k", ".to_v", ".to_out.0")
STEPS = 5
EXPR_SCALE = 1.0


# ============================================================================ bank plumbing


def transformer_blocks(unet):
    """[(path, BasicTransformerBlock)] in the official order: down_blocks, then mid_block, then up_blocks
    (ReferenceAdapter.register_hooks / update / clear all walk them so); this is also the execution order."""
    from diffusers.models.attention import BasicTransformerBlock

    out = []
    parts = [(f"down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks)]
    parts += [("mid_block", unet.mid_block)]
    parts += [(f"up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks)]
    for prefix, block in parts:
        for a, attn in enumerate(getattr(block, "attentions", None) or []):
            for t, tb in enumerate(attn.transformer_blocks):
                if isinstance(tb, BasicTransformerBlock):
                    out.append((f"{prefix}.attentions.{a}.transformer_blocks.{t}", tb))
    return out


class BankWrite:
    """attn1 processor wrapper of the reference UNet: records the self-attention input (= norm1 output, no
    pos_embed in SD1.5) of its single call, then runs the wrapped processor unchanged."""

    def __init__(self, inner, store, idx):
        self.inner, self.store, self.idx = inner, store, idx

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        assert encoder_hidden_states is None
        self.store.setdefault(self.idx, []).append(hidden_states.detach().clone())
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kw)


class BankRead:
    """attn1 processor wrapper of the denoising UNet: with a bank and cfg, rows [0, B/2) run unchanged and
    rows [B/2, B) get keys/values from cat([h, bank], tokens); without cfg every row does; no bank: unchanged."""

    def __init__(self, inner, holder, idx):
        self.inner, self.holder, self.idx = inner, holder, idx

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        assert encoder_hidden_states is None
        bank = self.holder.get("bank")
        if bank is None:
            return self.inner(attn, hidden_states, None, attention_mask, temb, **kw)
        h = hidden_states
        b = bank[self.idx].to(h.dtype)
        assert b.shape[0] == h.shape[0] and b.shape[2] == h.shape[2], (b.shape, h.shape)
        self.holder["calls"] = self.holder.get("calls", 0) + 1
        if self.holder["cfg"]:
            k = h.shape[0] // 2
            uc = self.inner(attn, h[:k], None, attention_mask, temb, **kw)
            c = self.inner(attn, h[k:], torch.cat([h[k:], b[k:]], 1), attention_mask, temb, **kw)
            return torch.cat([uc, c])
        return self.inner(attn, h, torch.cat([h, b], 1), attention_mask, temb, **kw)


def wrap_attn1(unet, make):
    """Replace every attn1 processor by make(original, block index); attn2 processors stay."""
    idx = {name: i for i, (name, _) in enumerate(transformer_blocks(unet))}
    procs = {}
    for name, proc in unet.attn_processors.items():
        if name.endswith(".attn1.processor"):
            procs[name] = make(proc, idx[name[: -len(".attn1.processor")]])
        else:
            procs[name] = proc
    assert sum(n.endswith(".attn1.processor") for n in procs) == len(idx)
    unet.set_attn_processor(procs)


def own_mha(attn, q_in, kv_in):
    """Independent attention: to_q(q_in), to_k/to_v(kv_in), per-head softmax(QK^T / sqrt(d)) V, to_out."""
    q, k, v = attn.to_q(q_in), attn.to_k(kv_in), attn.to_v(kv_in)
    b, n, c = q.shape
    hd = c // attn.heads
    q = q.view(b, -1, attn.heads, hd).transpose(1, 2)
    k = k.view(b, -1, attn.heads, hd).transpose(1, 2)
    v = v.view(b, -1, attn.heads, hd).transpose(1, 2)
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1)
    out = (p @ v).transpose(1, 2).reshape(b, -1, c)
    return attn.to_out[1](attn.to_out[0](out))


class OwnBankAttn:
    """float64 route: own self-attention with the bank (same rule as BankRead, written out row-half by row-half)."""

    def __init__(self, holder, idx):
        self.holder, self.idx = holder, idx

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        h = hidden_states
        bank = self.holder.get("bank")
        if bank is None:
            return own_mha(attn, h, h)
        b = bank[self.idx]
        k = h.shape[0] // 2 if self.holder["cfg"] else 0
        parts = []
        if k:
            parts.append(own_mha(attn, h[:k], h[:k]))
        parts.append(own_mha(attn, h[k:], torch.cat([h[k:], b[k:]], 1)))
        return torch.cat(parts)


# ============================================================================ inputs


def reference_image(size):
    """Deterministic 8-bit RGB 'aligned photo': vertical background gradient, a skin-toned ellipse (face)
    with two dark eyes and a mouth, a hair cap, plus N(0, 6^2) noise from torch.Generator(REF_IMAGE_SEED)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    u, v = (xx + 0.5) / size, (yy + 0.5) / size
    img = np.stack([60 + 120 * v, 90 + 60 * u, 170 - 80 * v], -1)

    def ellipse(cx, cy, rx, ry):
        r2 = ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2
        return np.clip((1.0 - r2) * 4.0, 0.0, 1.0)[..., None]

    face = ellipse(0.5, 0.52, 0.27, 0.36)
    img = img * (1 - face) + face * np.array([224.0, 178.0, 150.0])
    hair = ellipse(0.5, 0.26, 0.30, 0.16) * (v < 0.30)[..., None]
    img = img * (1 - hair) + hair * np.array([70.0, 45.0, 30.0])
    for cx in (0.39, 0.61):
        e = ellipse(cx, 0.47, 0.06, 0.035)
        img = img * (1 - e) + e * np.array([40.0, 30.0, 35.0])
    m = ellipse(0.5, 0.70, 0.10, 0.03)
    img = img * (1 - m) + m * np.array([170.0, 70.0, 80.0])
    g = torch.Generator("cpu").manual_seed(REF_IMAGE_SEED)
    img = img + torch.randn((size, size, 3), generator=g, dtype=torch.float64).numpy() * 6.0
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def image_tensor(img, dtype=torch.float32):
    """The demo's preprocessing: (torch.tensor(img, dtype).permute(2, 0, 1) / 255) * 2 - 1 -> (3, H, W)."""
    return (torch.tensor(img, dtype=dtype).permute(2, 0, 1) / 255) * 2 - 1


# ============================================================================ main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", required=True, help="fixture root (make_fixtures.py + make_feature_fixtures.py)")
    ap.add_argument("--official-ref-adapter", default=None,
                    help="path of the official arc2face/ref_adapter.py (foivospar/Arc2Face) for route O")
    args = ap.parse_args()

    import diffusers
    import peft
    import transformers

    t_start = time.time()
    torch.manual_seed(0)  # nothing below draws from the global generator; fixed anyway
    root = os.path.abspath(args.fixture)
    models_dir = os.path.join(root, "models")
    ref_dir = os.path.join(root, "reference")
    feat = os.path.join(ref_dir, "features")
    out_dir = os.path.join(feat, "ref")
    lora_dir = os.path.join(models_dir, "ref_adapter")
    ours = [out_dir, lora_dir]
    for need in (os.path.join(ref_dir, "params.json"), os.path.join(feat, "params.json"),
                 os.path.join(feat, "expression.npy"), os.path.join(models_dir, "exp_adapter", "exp_adapter.bin")):
        if not os.path.isfile(need):
            sys.exit(f"{need} missing: run tools/make_fixtures.py and tools/make_feature_fixtures.py first")
    before = mff.snapshot(root, ours)
    for p in ours:
        if os.path.isdir(p):
            shutil.rmtree(p)
    os.makedirs(out_dir)
    os.makedirs(lora_dir)

    C, base = mff.load_context(root, out_dir)
    save = C.save
    sfac = C.vae.config.scaling_factor
    n_img = 2
    blocks = transformer_blocks(C.unet)
    nb = len(blocks)

    # ------------------------------------------------------------------ the reference LoRA
    only = lambda n: n.endswith(ATTN_SUFFIXES)  # noqa: E731
    gain = 1.0
    for _ in range(3):
        lora = mff.random_lora(C.unet, REF_LORA_RANK, REF_LORA_SEED, gain, only=only)
        o = mff.lora_unet_out(mff.fused_copy(C.unet, [(lora, REF_SCALE)], torch.float32), C)
        gain *= REF_LORA_TARGET_CHANGE / std_change(o, C.base_out500)
    lora = mff.random_lora(C.unet, REF_LORA_RANK, REF_LORA_SEED, gain, only=only)
    sd = {}
    for path, (down, up) in sorted(lora.items()):
        sd[f"unet.{path}.lora_A.weight"] = down
        sd[f"unet.{path}.lora_B.weight"] = up
    lora_file = os.path.join(lora_dir, "pytorch_lora_weights.safetensors")
    mff.save_st(lora_file, sd)
    # diffusers reads it to W + scale * B @ A (alpha = rank without metadata)
    fw = mff.fused_weights_via_diffusers(C, lora_file, scale=REF_SCALE)
    own_w = {p: C.unet.state_dict()[p + ".weight"].double() + REF_SCALE * mff.lora_delta(d.double(), u.double())
             for p, (d, u) in lora.items()}
    lora_fuse_err = float(max((fw[p].double() - own_w[p]).abs().max() for p in lora))
    untouched = [p for p, _ in mff.lora_targets(C.unet) if p not in lora]
    assert all(torch.equal(fw[p], C.unet.state_dict()[p + ".weight"]) for p in untouched)
    lora_only_out = mff.lora_unet_out(mff.fused_copy(C.unet, [(lora, REF_SCALE)], torch.float32), C)
    log(f"  ref LoRA: {len(lora)} modules, up gain {gain:.4g}, change at {REF_SCALE}: "
        f"{std_change(lora_only_out, C.base_out500):.4f}; diffusers fuse vs own max abs {lora_fuse_err:.2e}")

    # ------------------------------------------------------------------ reference image and VAE latents
    img = reference_image(C.size)
    from PIL import Image

    png = os.path.join(out_dir, "reference_image.png")
    Image.fromarray(img, "RGB").save(png)
    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), img)
    save("reference_image", img, np.uint8)
    x1 = image_tensor(img)
    with torch.no_grad():
        dist4 = C.vae.encode(torch.stack([x1, x1]).repeat_interleave(n_img, dim=0)).latent_dist
        ref_lat4 = dist4.mean * sfac
        ref_lat1 = C.vae.encode(x1[None]).latent_dist.mean * sfac
        vae64 = copy.deepcopy(C.vae).double().eval()
        ref_lat64 = vae64.encode(image_tensor(img, torch.float64)[None]).latent_dist.mean * sfac
    save("ref_latents", ref_lat4)
    lat_rows_equal = bool(all(torch.equal(ref_lat4[i], ref_lat4[0]) for i in range(ref_lat4.shape[0])))
    vae_info = dict(
        rel_err_vs_f64=rel_err(ref_lat4[0:1], ref_lat64),
        rows_bitwise_equal=lat_rows_equal,
        batch1_vs_batch4_max_abs=float((ref_lat1 - ref_lat4[0:1]).abs().max()),
        posterior_std_over_mean_std=float(dist4.std.std() / dist4.mean.std()),
        posterior_std_mean=float(dist4.std.mean()),
    )
    log(f"  reference latents: {vae_info}")

    # ------------------------------------------------------------------ reference pass (route A) -> bank
    def reference_pass(rows):
        u = copy.deepcopy(C.unet)
        store = {}
        wrap_attn1(u, lambda inner, i: BankWrite(inner, store, i))
        order = []
        hooks = [tb.register_forward_pre_hook(lambda m, a, i=i: order.append(i)) for i, (_, tb) in
                 enumerate(transformer_blocks(u))]
        lat = ref_lat4[:1].repeat(rows, 1, 1, 1) if rows != ref_lat4.shape[0] else ref_lat4
        with torch.no_grad():
            u(lat, torch.zeros(rows).long(), torch.cat([C.cond] * rows), return_dict=False)
        for h in hooks:
            h.remove()
        assert order == list(range(nb)), order
        assert sorted(store) == list(range(nb)) and all(len(v) == 1 for v in store.values())
        return [store[i][0] for i in range(nb)]

    bank4 = reference_pass(2 * n_img)  # CFG layout: rows [uncond x n, cond x n], all with the cond context
    bank2 = reference_pass(n_img)
    bank1 = reference_pass(1)
    for i, b in enumerate(bank4):
        save(f"ref_bank_{i}", b)
    bank_rows_equal = bool(all(torch.equal(b[r], b[0]) for b in bank4 for r in range(b.shape[0])))
    bank_batch_diff = dict(
        batch2_vs_batch4=float(max((a - b[:n_img]).abs().max() for a, b in zip(bank2, bank4))),
        batch1_vs_batch4=float(max((a - b[:1]).abs().max() for a, b in zip(bank1, bank4))))

    # route B: float64 plain UNet, bank from forward hooks on norm1, float64 latents
    unet64 = copy.deepcopy(C.unet).double().eval()

    def bank64_for(rows):
        got = {}
        hooks = [tb.norm1.register_forward_hook(lambda m, a, out, i=i: got.setdefault(i, out.detach().clone()))
                 for i, (_, tb) in enumerate(transformer_blocks(unet64))]
        with torch.no_grad():
            unet64(ref_lat64.repeat(rows, 1, 1, 1), torch.zeros(rows).long(), torch.cat([C.cond64] * rows))
        for h in hooks:
            h.remove()
        return [got[i] for i in range(nb)]

    bank64_4 = bank64_for(2 * n_img)
    bank64_2 = [b[:n_img] for b in bank64_4]
    bank_err = max(rel_err(a, b) for a, b in zip(bank4, bank64_4))
    log(f"  bank: {nb} blocks, rows equal {bank_rows_equal}, {bank_batch_diff}, rel err vs f64 {bank_err:.2e}")

    # ------------------------------------------------------------------ denoising UNets
    adapter = torch.load(os.path.join(models_dir, "exp_adapter", "exp_adapter.bin"), weights_only=True)
    expr = torch.from_numpy(np.load(os.path.join(feat, "expression.npy")))
    edim = expr.shape[0]
    embeds_cfg = torch.stack([torch.zeros(edim), expr])[:, None]  # (2, 1, 55) [zeros, expression]

    def pipe_a(expression=False, scale=REF_SCALE, wrap=True):
        """Route A: the demo's pipeline order (load_ip_adapter, then load_lora_weights, set_adapters) with
        BankRead wrappers on every attn1 (wrap=False: without them, for route O)."""
        u = copy.deepcopy(C.unet)
        p = rc.make_pipeline(u, C.enc, C.vae, rc.make_scheduler(C.sched_config))
        if expression:
            p.load_ip_adapter(os.path.join(models_dir, "exp_adapter"), subfolder="", weight_name="exp_adapter.bin",
                              image_encoder_folder=None)
            p.set_ip_adapter_scale(EXPR_SCALE)
        p.load_lora_weights(lora_dir, weight_name="pytorch_lora_weights.safetensors", adapter_name="ref")
        p.set_adapters("ref", scale)
        holder = {}
        if wrap:
            wrap_attn1(p.unet, lambda inner, i: BankRead(inner, holder, i))
        return p, holder

    lora64 = mff.fused_copy(C.unet, [(lora, REF_SCALE)])  # float64, W + 0.8 * B @ A

    def unet_b(expression=False):
        """Route B: float64 fused UNet, OwnBankAttn on attn1, own decoupled cross-attention on attn2."""
        holder = {}
        if expression:
            u, ip_holder = mff.own_ip_unet(C, adapter, "linear", base=lora64)
            ip_holder["scale"] = EXPR_SCALE
        else:
            u, ip_holder = copy.deepcopy(lora64), None
        wrap_attn1(u, lambda inner, i: OwnBankAttn(holder, i))
        return u, holder, ip_holder

    # ---- UNet output at t = 500 (batch [uncond, cond] of reference/unet_*.npy), bank rows [0, 2)
    p, holder = pipe_a()
    holder.update(bank=[b[:2] for b in bank4], cfg=True)
    with torch.no_grad():
        o = p.unet(C.unet_sample, torch.tensor(500), encoder_hidden_states=C.unet_ehs).sample
    save("ref_unet_out", o)
    holder["bank"] = None
    with torch.no_grad():
        o_nb = p.unet(C.unet_sample, torch.tensor(500), encoder_hidden_states=C.unet_ehs).sample.numpy()
    u64, h64, _ = unet_b()
    h64.update(bank=[b[:2] for b in bank64_4], cfg=True)
    with torch.no_grad():
        o64 = u64(C.unet_sample.double(), torch.tensor(500), encoder_hidden_states=C.unet_ehs.double()).sample
    unet_case = dict(
        file="ref_unet_out.npy", rel_err_vs_f64=rel_err(o, o64),
        lora_only_rel_err_vs_own_fused_f32=rel_err(o_nb, lora_only_out),
        change_lora_only_vs_plain=std_change(o_nb, C.base_out500),
        change_bank_vs_lora_only=std_change(o, o_nb),
        uncond_row_equals_lora_only=float(np.abs(o[0].numpy() - o_nb[0]).max()),
        change_cond_row_bank_vs_lora_only=std_change(o[1:].numpy(), o_nb[1:]))
    log(f"  UNet out: {unet_case}")

    # ---- generations
    gens_out = {}
    e_batch = torch.cat([torch.zeros(n_img, edim), expr[None].repeat(n_img, 1)])
    cases = [("ref", 3.0, False, True), ("ref_expr", 3.0, True, True), ("ref_nocfg", 1.0, False, True),
             ("ref_nobank", 3.0, False, False)]
    for case, guid, expression, with_bank in cases:
        cfg = guid > 1
        p, holder = pipe_a(expression)
        holder.update(bank=(bank4 if cfg else bank2) if with_bank else None, cfg=cfg)
        extra = dict(ip_adapter_image_embeds=[embeds_cfg.clone()]) if expression else None
        n_calls = []
        hk = p.unet.register_forward_pre_hook(lambda m, a, kw: n_calls.append(a[0].shape[0]), with_kwargs=True)
        lat, imgs, seen, raw = mff.run_pipe(C, p, STEPS, guid, latents=C.gen_noise, extra=extra, check_np=False)
        hk.remove()
        assert all(n == (2 * n_img if cfg else n_img) for n in n_calls) and len(n_calls) == STEPS
        if with_bank:
            assert holder["calls"] == STEPS * nb, holder.get("calls")
        u64, h64, ip64 = unet_b(expression)
        h64.update(bank=(bank64_4 if cfg else bank64_2) if with_bank else None, cfg=cfg)
        if ip64 is not None:
            ip64["tokens"] = mff.own_tokens(adapter["image_proj"], e_batch, "linear")
        xi, g = mff.x_init(C, C.gen_noise)
        x64 = mff.manual_loop("dpmpp-2m", STEPS, guid, xi, g, mff.unet_eps_fn(C, u64))
        more = dict(reference_scale=REF_SCALE, bank="none (empty)" if not with_bank else
                    (f"ref_bank_<i>.npy, all {2 * n_img} rows" if cfg else f"ref_bank_<i>.npy rows [0, {n_img})"),
                    expression_adapter_scale=EXPR_SCALE if expression else None, unet_batch_per_step=n_calls[0])
        gens_out[case] = mff.gen_entry(C, case, lat, imgs, raw, seen, STEPS, guid, True, "dpmpp-2m",
                                       rel_err(lat, x64), **more)

    def lat_of(case):
        return np.load(os.path.join(out_dir, f"gen_{case}_latents.npy"))

    plain = {3.0: np.load(os.path.join(ref_dir, "gen_cfg_latents.npy")),
             1.0: np.load(os.path.join(ref_dir, "gen_nocfg_latents.npy"))}
    a, d = lat_of("ref").astype(np.float64), lat_of("ref_nobank").astype(np.float64)
    img_a, img_d = (np.load(os.path.join(out_dir, f"gen_{c}_images.npy")).astype(np.int64)
                    for c in ("ref", "ref_nobank"))
    controls = dict(
        ref_vs_ref_nobank=dict(rel_diff=float(np.abs(a - d).max() / np.abs(d).max()), change=std_change(a, d),
                               images_mean_abs_diff_255=float(np.abs(img_a - img_d).mean())),
        ref_nobank_vs_plain_gen_cfg=std_change(d, plain[3.0]),
        ref_vs_plain_gen_cfg=std_change(a, plain[3.0]),
        ref_nocfg_vs_plain_gen_nocfg=std_change(lat_of("ref_nocfg"), plain[1.0]),
        ref_expr_vs_expr1=std_change(lat_of("ref_expr"), np.load(os.path.join(feat, "gen_expr1_latents.npy"))),
        ref_expr_vs_ref=std_change(lat_of("ref_expr"), a),
    )
    assert controls["ref_vs_ref_nobank"]["rel_diff"] > 1e-2, controls
    log(f"  controls: {controls}")

    # ------------------------------------------------------------------ route O: the official class
    official = None
    if args.official_ref_adapter:
        official = run_official(C, args.official_ref_adapter, img, pipe_a, embeds_cfg, out_dir, n_img, nb, bank4)
        log(f"  official: {official}")

    # ------------------------------------------------------------------ params.json
    P = build_params(C, base, lora, gain, lora_fuse_err, img, vae_info, blocks, bank4, bank_rows_equal,
                     bank_batch_diff, bank_err, unet_case, gens_out, controls, official, n_img,
                     dict(torch=torch.__version__, diffusers=diffusers.__version__,
                          transformers=transformers.__version__, peft=peft.__version__, numpy=np.__version__))
    with open(os.path.join(out_dir, "params.json"), "w") as fh:
        json.dump(mff.finite_json(P), fh, indent=1, allow_nan=False)
        fh.write("\n")

    after = mff.snapshot(root, ours)
    assert after == before, "an existing fixture file changed: " + str(
        sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)))
    total, rows = 0, []
    for p in ours:
        for dp, _, fns in os.walk(p):
            for fn in fns:
                s = os.path.getsize(os.path.join(dp, fn))
                total += s
                rows.append((s, os.path.relpath(os.path.join(dp, fn), root)))
    rows.sort(reverse=True)
    log(f"existing fixture files unchanged ({len(before)} checked by sha256)")
    log(f"written: {total / 1e6:.3f} MB in {len(rows)} files; largest: " +
        ", ".join(f"{n} {s / 1e3:.0f} kB" for s, n in rows[:4]))
    log(f"done in {time.time() - t_start:.1f}s")


# ============================================================================ route O


def run_official(C, path, img, pipe_a, embeds_cfg, out_dir, n_img, nb, bank4):
    """The official ReferenceAdapter (hacked BasicTransformerBlock.forward) wired as app_exp_adapter.py does;
    einops is stubbed when missing (ref_adapter.py imports rearrange but never calls it)."""
    if importlib.util.find_spec("einops") is None:
        stub = types.ModuleType("einops")
        stub.rearrange = None
        sys.modules["einops"] = stub
    spec = importlib.util.spec_from_file_location("official_ref_adapter", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    RA = mod.ReferenceAdapter
    sfac = C.vae.config.scaling_factor

    def demo(expression, guid, with_bank, unet_out=False):
        p, _ = pipe_a(expression, wrap=False)
        ref_unet = copy.deepcopy(C.unet)
        w = RA(ref_unet, mode="write")
        r = RA(p.unet, mode="read", cfg=guid > 1)
        n = 1 if unet_out else n_img
        if with_bank:
            ref_img = image_tensor(img)
            ref_img = (torch.stack([ref_img, ref_img]) if guid > 1 else ref_img[None]).repeat_interleave(n, dim=0)
            with torch.no_grad():
                lat = C.vae.encode(ref_img).latent_dist.mean * sfac  # the demo: .sample()
                ehs = (torch.cat([C.cond, C.cond]) if guid > 1 else C.cond).repeat_interleave(n, dim=0)
                ref_unet(lat, torch.zeros(lat.size(0)).long(), ehs, return_dict=False)
            r.update(w)
            assert all(len(tb.bank) == 1 for tb in _official_order(p.unet))
        if unet_out:
            with torch.no_grad():
                res = p.unet(C.unet_sample, torch.tensor(500), encoder_hidden_states=C.unet_ehs).sample.numpy()
        else:
            extra = dict(ip_adapter_image_embeds=[embeds_cfg.clone()]) if expression else None
            res = mff.run_pipe(C, p, STEPS, guid, latents=C.gen_noise, extra=extra, check_np=False)[0]
        wb = [tb.bank[0].clone() if tb.bank else None for tb in _official_order(ref_unet)]
        r.clear()
        w.clear()
        return res, wb

    out = {}
    o, wb = demo(False, 3.0, True, unet_out=True)
    out["ref_unet_out"] = rel_err(o, np.load(os.path.join(out_dir, "ref_unet_out.npy")))
    _, wb = demo(False, 3.0, True, unet_out=False)
    out["bank_max_abs_vs_ref_bank"] = float(max((a - b).abs().max() for a, b in zip(wb, bank4)))
    assert len(wb) == nb
    for case, expression, guid, with_bank in (("ref", False, 3.0, True), ("ref_expr", True, 3.0, True),
                                              ("ref_nocfg", False, 1.0, True), ("ref_nobank", False, 3.0, False)):
        lat, _ = demo(expression, guid, with_bank)
        out[f"gen_{case}"] = rel_err(lat, np.load(os.path.join(out_dir, f"gen_{case}_latents.npy")))
    return out


def _official_order(unet):
    return [tb for _, tb in transformer_blocks(unet)]


# ============================================================================ params.json


def build_params(C, base, lora, gain, lora_fuse_err, img, vae_info, blocks, bank4, bank_rows_equal, bank_batch_diff,
                 bank_err, unet_case, gens_out, controls, official, n_img, versions):
    nb = len(blocks)
    B = 2 * n_img
    bank_table = []
    for i, (name, tb) in enumerate(blocks):
        bank_table.append(dict(index=i, file=f"ref_bank_{i}.npy", block=name, shape=list(bank4[i].shape),
                               tokens=bank4[i].shape[1], channels=bank4[i].shape[2], heads=tb.attn1.heads))
    cli_cases = {}
    for case in ("ref", "ref_expr", "ref_nocfg"):
        e = gens_out[case]
        flags = ["--reference", "{ref}/features/ref/reference_image.png", "--reference-aligned",
                 "--reference-scale", repr(REF_SCALE)]
        if e.get("expression_adapter_scale") is not None:
            flags += ["--expression", "{ref}/features/expression.npy", "--expression-scale", repr(EXPR_SCALE)]
        cli_cases[case] = dict(latents="features/ref/" + e["latents"], images="features/ref/" + e["images"],
                               noise=e["noise"], seed=None, steps=e["steps"], guidance=e["guidance"],
                               num_images=n_img, size=C.size, flags=flags)
    return dict(
        generated_by="tools/make_reference_fixtures.py --fixture DIR",
        versions=versions,
        fixture_variant=base["variant"],
        source=dict(
            repository="foivospar/Arc2Face (commit a11633e 'Expression Adapter'; README-only changes after it)",
            files=["gradio_demo/app_exp_adapter.py (generate_image: LoRA + reference pass + pipeline call)",
                   "arc2face/ref_adapter.py (ReferenceAdapter: hacked BasicTransformerBlock.forward, modes 'write' "
                   "and 'read', update, clear; based on hallo's mutual_self_attention.py)",
                   "arc2face/utils.py (image_align: FFHQ alignment)"],
            demo_wiring="pipeline.load_ip_adapter('models', subfolder='exp_adapter', weight_name='exp_adapter.bin', "
                        "image_encoder_folder=None); pipeline.load_lora_weights('models/ref_adapter', weight_name="
                        "'pytorch_lora_weights.safetensors', adapter_name='ref'); ref_unet = a second "
                        "UNet2DConditionModel.from_pretrained('models', subfolder='arc2face') (no LoRA, no IP-Adapter); "
                        "ReferenceAdapter(ref_unet, mode='write'); ReferenceAdapter(pipeline.unet, mode='read', "
                        "cfg=True). Per job: set_ip_adapter_scale(exp_scale); set_adapters('ref', scale if reference "
                        "mode else 0.0); reference pass; ref_adapter_r.update(ref_adapter_w); pipeline(...); then "
                        "clear() both banks",
        ),
        common=dict(
            paths="file names are relative to DIR/reference/features/ref unless they start with models/ (DIR/models), "
                  "reference/ (DIR/reference) or features/ (DIR/reference/features)",
            num_images=n_img, image_size=C.size, latent_size=C.lat,
            identity="cond = rc.encode_identity(encoder, reference/id_embedding.npy) = reference/encoder_cond.npy "
                     "(1, 77, H); uncond = reference/encoder_uncond.npy (as features/params.json 'common')",
            pipeline_call="as features/params.json common.pipeline_call: StableDiffusionPipeline, "
                          "DPMSolverMultistepScheduler.from_config(models/scheduler), latents = reference/gen_noise.npy "
                          "(x init_noise_sigma = 1), 5 steps, GENS seeds 42 + i (unused by DPM++ 2M)",
            relative_error="max|a - b| / max|b|", change="std(a - b) / std(b)",
        ),
        lora=dict(
            file="models/ref_adapter/pytorch_lora_weights.safetensors",
            layout="PEFT keys 'unet.<module path>.lora_A.weight' (down, (r, in)) and 'unet.<module path>.lora_B.weight' "
                   "(up, (out, r)), float32, NO safetensors metadata -> diffusers uses lora_alpha = r (scale factor "
                   "alpha / r = 1): W' = W + s * (B @ A) with s the Reference Adapter scale",
            rank=REF_LORA_RANK, alpha="= rank (no metadata)", modules=len(lora),
            targets_rule="to_q, to_k, to_v, to_out.0 of EVERY attention (attn1 and attn2 of every transformer block "
                         "in down, mid and up blocks); the official file's targets are not known here (the diffusers "
                         "LoRA training scripts' default set is assumed)",
            targets=sorted(lora),
            random_init=f"make_feature_fixtures.random_lora(unet, rank {REF_LORA_RANK}, seed {REF_LORA_SEED}, up_gain "
                        f"{gain:.6g}, only the targets above): per module in named_modules order down ~ N(0, 1/in), "
                        f"up ~ N(0, up_gain^2 / r); up_gain sized so the LoRA alone at scale {REF_SCALE} changes the "
                        f"t = 500 UNet call by ~{REF_LORA_TARGET_CHANGE}",
            loaded_as="pipe.load_lora_weights('models/ref_adapter', weight_name='pytorch_lora_weights.safetensors', "
                      "adapter_name='ref'); pipe.set_adapters('ref', 0.8) (the demo's call)",
            fused_weights_max_abs_diff_diffusers_vs_own_f64=lora_fuse_err,
            applies_to="the denoising UNet only (also to to_k/to_v applied to the bank tokens); NOT the reference UNet",
        ),
        reference_image=dict(
            png="reference_image.png", npy="reference_image.npy (uint8 HWC RGB)", shape=list(img.shape),
            meaning="stands for the input photo already FFHQ-aligned to the generation size (the CLI's "
                    "--reference-aligned: no detection/alignment)",
            recipe="reference_image() in the tool: gradient background, skin ellipse, eyes, mouth, hair, "
                   f"+ N(0, 6^2) noise from torch.Generator({REF_IMAGE_SEED}), rounded, clipped to 0..255",
            demo_alignment="the demo aligns the uploaded photo with image_align(img, 68 face_alignment landmarks, "
                           "output_size=512) (FFHQ recipe: quad from eyes/mouth, shrink, crop, reflect-pad with blur, "
                           "PIL QUAD transform to 4096 then LANCZOS to 512) and, in reference mode, computes the "
                           "identity embedding from that ALIGNED image (insightface antelopev2, det_size 256)",
        ),
        vae_encode=dict(
            preprocessing="x = (torch.tensor(uint8 HWC, float32).permute(2, 0, 1) / 255) * 2 - 1 (float32, this order "
                          "of operations), batch (2 * num_images, 3, S, S): torch.stack([x, x]).repeat_interleave("
                          "num_images, 0) -> identical rows",
            call="vae.encode(x).latent_dist.mean * vae.config.scaling_factor (encoder -> quant_conv -> first "
                 "latent_channels channels of the moments)",
            file="ref_latents.npy (2 * num_images, 4, L, L), rows identical",
            official_difference="the demo uses latent_dist.sample() (mean + std * randn from the GLOBAL torch RNG, no "
                                "generator: not reproducible); these fixtures use the mean (deterministic)",
            **vae_info,
        ),
        reference_pass=dict(
            unet="the plain Arc2Face UNet (models/arc2face): no LoRA, no Expression Adapter, no ControlNet",
            call="unet(ref_latents (B, 4, L, L), timestep torch.zeros(B).long() (t = 0 for every row), "
                 "encoder_hidden_states = cond for EVERY row (torch.cat([cond, cond]).repeat_interleave(num_images)); "
                 "the output is discarded",
            batch=f"with CFG B = 2 * num_images = {B} (the demo's layout: stack([img, img]) then repeat_interleave), "
                  f"rows i pair with rows i of the denoising batch [uncond x n, cond x n]; without CFG B = num_images "
                  f"(our extension, see generations.ref_nocfg). All rows are identical: one row computed once and "
                  f"broadcast gives the same bank (max abs differences {bank_batch_diff})",
            rows_bitwise_equal=bank_rows_equal,
            recorded="every BasicTransformerBlock appends norm_hidden_states = norm1(hidden_states) (the input of "
                     "attn1; pos_embed is None in SD1.5) to its bank, once per forward: one entry per block per job",
            files="ref_bank_<i>.npy, float32 (B, tokens, channels), tokens = h * w of the block's resolution",
            order="i = 0.. over transformer blocks: down_blocks[b].attentions[a].transformer_blocks[t] in order, then "
                  "mid_block, then up_blocks (ReferenceAdapter walks them so and pairs writer/reader blocks by that "
                  "list; it is also the execution order, checked with hooks). NOTE: unet.attn_processors lists "
                  "down, UP, then MID (the Expression Adapter's k order) - not this order",
            table=bank_table,
            rel_err_vs_f64=bank_err,
            f64_route="float64 copy of the UNet, ref latents from a float64 VAE, bank read by forward hooks on "
                      "each block's norm1",
        ),
        attention=dict(
            rule="denoising UNet, every BasicTransformerBlock's self-attention (attn1), with n = norm1(h) (B, N, C) and "
                 "bank entry m (B, M, C): with CFG (demo: cfg=True) split at B/2: rows [0, B/2) (unconditional) "
                 "attn1(n) unchanged; rows [B/2, B) (conditional): q = to_q(n), k = to_k(cat([n, m], dim=1)), v = "
                 "to_v(cat([n, m], dim=1)) (N + M tokens), per-head softmax(q k^T / sqrt(head_dim)) v, then to_out; "
                 "outputs concatenated back [uncond, cond]. Without CFG (cfg=False) every row uses cat([n, m]). "
                 "to_q/to_k/to_v/to_out carry the LoRA at the reference scale (the bank is projected by the LoRA'd "
                 "to_k/to_v). Cross-attention (attn2, with the Expression Adapter's decoupled branch when loaded), "
                 "feed-forward and everything else are unchanged",
            empty_bank="with an empty bank the official read path gives exactly plain self-attention (cat([n]) = n)",
            bank_is_fixed="the bank does not change over the denoising steps (one reference pass per job)",
            scale="the Reference Adapter scale (--reference-scale, demo slider 0..1, default 0.8) is ONLY the LoRA "
                  "weight; the bank always acts at full strength in reference mode (the demo at scale 0 in reference "
                  "mode still uses the bank). The demo's non-reference mode sets the LoRA to 0.0 and runs no "
                  "reference pass (empty bank): exactly a plain generation",
            no_style_fidelity="no style-fidelity mixing (unlike diffusers' community reference-only pipeline), no "
                              "attention weighting, no mask, no mean/var (AdaIN) transfer on the ResNets",
        ),
        unet_output=dict(
            recipe="route A pipeline UNet (LoRA at 0.8, bank rows [0, 2) of ref_bank_<i>.npy, cfg split at 1) on "
                   "reference/unet_sample.npy at t = 500 with reference/unet_encoder_hidden_states.npy ([uncond, "
                   "cond]): row 0 = LoRA only, row 1 = LoRA + bank",
            **unet_case,
        ),
        generations=gens_out,
        generation_recipes=dict(
            ref="guidance 3.0, LoRA 0.8, bank from the CFG reference pass (B = 4), no Expression Adapter",
            ref_expr="as ref plus the Expression Adapter (models/exp_adapter/exp_adapter.bin loaded BEFORE the LoRA as "
                     "in the demo, set_ip_adapter_scale(1.0), ip_adapter_image_embeds=[(2, 1, 55) = [zeros, "
                     "features/expression.npy]], as features/params.json expression.generations.expr1); the reference "
                     "UNet never sees the expression",
            ref_nocfg="guidance 1.0 (one UNet call per step on batch num_images = 2 with [cond, cond]); every row "
                      "attends to cat([n, m]) (ReferenceAdapter(mode='read', cfg=False)); bank from a reference pass "
                      "on batch 2 (its rows equal ref_bank_<i>.npy rows [0, 2) up to float32 batch effects, see "
                      "reference_pass.batch). The demo itself cannot do this: its "
                      "guidance slider starts at 1.1 and its reader is built with cfg=True (with guidance <= 1 the "
                      "batch would be split in half and the bank's batch 2n would not match)",
            ref_nobank="NEGATIVE control: as ref with an EMPTY bank (LoRA 0.8 only): what the demo's reader gives "
                       "when no reference pass ran",
            independent_check="route B: float64 UNet with W + 0.8 * B @ A fused by hand, own explicit-softmax attn1 "
                              "with the float64 bank, own float64 IP-Adapter attention and image projection "
                              "(make_feature_fixtures.own_ip_unet / own_tokens), float64 DPM++ 2M "
                              "(make_feature_fixtures.manual_loop); rel_err_vs_f64 in each entry",
        ),
        controls=controls,
        official_route=official if official is not None else "not run (pass --official-ref-adapter PATH)",
        official_route_note="relative errors of the official ReferenceAdapter (demo wiring; VAE mean instead of "
                            "sample) against the files here; bank_max_abs_vs_ref_bank compares its write-mode bank",
        cli_cases=dict(
            note="tools/check_generate.py runs BIN generate --models DIR/models --embedding reference/id_embedding.npy "
                 "--noise reference/gen_noise.npy --num-images 2 --steps 5 --guidance G --size PX + flags "
                 "({ref} = DIR/reference); latents/images paths are relative to DIR/reference",
            cases=cli_cases,
        ),
        files=dict(sorted(C.files.items())),
    )


if __name__ == "__main__":
    main()
