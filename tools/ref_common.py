"""Shared pieces of the Python reference stack (diffusers + transformers) for Arc2Face Studio.

Used by make_fixtures.py, check_generate.py and bench_diffusers.py. Everything here follows
RECIPE.md ("Models folder", "Identity encoder", "Sampling"): the models folder layout, the identity encoder recipe and the
DPM-Solver++ scheduler built from SD1.5's PNDM config.
"""

import json
import os

import numpy as np
import torch

# SD1.5's scheduler/scheduler_config.json (PNDM), exactly as shipped.
PNDM_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# RECIPE.md "Identity encoder": fixed prompts, no tokenizer.
# "photo of a id person" -> [49406, 1125, 539, 320, 1014, 2533, 49407] + 70 x 49407
COND_IDS = [49406, 1125, 539, 320, 1014, 2533, 49407] + [49407] * 70
UNCOND_IDS = [49406] + [49407] * 76
ID_POS = 4  # row replaced by the identity vector (token "id" = 1014)
assert len(COND_IDS) == 77 and len(UNCOND_IDS) == 77 and COND_IDS[ID_POS] == 1014


def make_scheduler(config=None):
    """DPMSolverMultistepScheduler exactly as diffusers builds it from SD1.5's PNDM config."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(dict(config or PNDM_SCHEDULER_CONFIG))


def text_transformer(model):
    """The CLIP text transformer module (transformers v5: the model itself; v4: model.text_model)."""
    return model.text_model if hasattr(model, "text_model") else model


def _run_text_encoder(model, inputs_embeds_tok):
    """Position embeddings + causal CLIP encoder + final LN, on token embeddings (B, 77, hidden).

    Mirrors CLIPTextModel.forward of the installed transformers version, but starting from
    token embeddings instead of ids.
    """
    tm = text_transformer(model)
    hidden = tm.embeddings(inputs_embeds=inputs_embeds_tok)  # adds position_embedding(arange(77))
    try:
        # transformers >= 5: the mask comes from masking_utils.create_causal_mask (None under SDPA,
        # which then uses is_causal=True inside the attention), exactly as CLIPTextModel.forward.
        from transformers.masking_utils import create_causal_mask  # noqa: F401

        have_v5 = not hasattr(model, "text_model")
    except ImportError:
        have_v5 = False
    if have_v5:
        from transformers.masking_utils import create_causal_mask

        mask = create_causal_mask(config=tm.config, inputs_embeds=hidden, attention_mask=None, cache=None)
        out = tm.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
    else:  # transformers 4.x
        from transformers.modeling_attn_mask_utils import _create_4d_causal_attention_mask

        cmask = _create_4d_causal_attention_mask(hidden.shape[:2], hidden.dtype, device=hidden.device)
        out = tm.encoder(inputs_embeds=hidden, attention_mask=None, causal_attention_mask=cmask)
    return tm.final_layer_norm(out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])


def id_row(id_vec, hidden, dtype=torch.float32):
    """L2-normalised identity vector zero-padded on the right to the hidden size."""
    v = torch.as_tensor(np.asarray(id_vec), dtype=torch.float32).reshape(-1)
    d = v.shape[0]
    assert d <= hidden, f"identity dim {d} > encoder hidden {hidden}"
    v = v / v.norm()
    row = torch.zeros(hidden, dtype=torch.float32)
    row[:d] = v
    return row.to(dtype)


@torch.no_grad()
def encode_identity(model, id_vec):
    """Arc2Face conditional embedding (1, 77, hidden), RECIPE.md "Identity encoder"."""
    tm = text_transformer(model)
    emb = tm.embeddings.token_embedding
    dtype = emb.weight.dtype
    ids = torch.tensor([COND_IDS], dtype=torch.long)
    tok = emb(ids).clone()
    tok[0, ID_POS] = id_row(id_vec, tok.shape[-1], dtype)
    return _run_text_encoder(model, tok)


@torch.no_grad()
def encode_ids_manual(model, ids):
    """Same manual path without replacement (used to check it equals model(input_ids))."""
    tm = text_transformer(model)
    tok = tm.embeddings.token_embedding(torch.tensor([ids], dtype=torch.long))
    return _run_text_encoder(model, tok)


@torch.no_grad()
def encode_uncond(model):
    """Unconditional embedding (1, 77, hidden): the encoder on the empty-prompt ids."""
    return model(input_ids=torch.tensor([UNCOND_IDS], dtype=torch.long)).last_hidden_state


def save_encoder(model, enc_dir, store_dtype):
    """config.json via config.save_pretrained, weights via torch.save (zip pickle), keys text_model.*.

    The non-persistent position_ids buffer is not in the state dict (and is dropped if a
    transformers version puts it there). Every tensor is contiguous and owns its storage.
    """
    os.makedirs(enc_dir, exist_ok=True)
    model.config.save_pretrained(enc_dir)
    sd = {}
    for k, v in text_transformer(model).state_dict().items():
        if k.endswith("position_ids"):
            continue
        sd["text_model." + k] = v.detach().to(store_dtype).contiguous().clone()
    torch.save(sd, os.path.join(enc_dir, "pytorch_model.bin"))
    return sd


def find_models_dir(path):
    """Accept either the models folder itself or a fixture root holding models/."""
    if os.path.isdir(os.path.join(path, "arc2face")):
        return path
    if os.path.isdir(os.path.join(path, "models", "arc2face")):
        return os.path.join(path, "models")
    raise SystemExit(f"no models folder (arc2face/) under {path}")


def load_models(models_dir):
    """Load UNet, encoder, VAE and scheduler from a models folder (RECIPE.md "Models folder"), all float32 on CPU."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(os.path.join(models_dir, "arc2face"), torch_dtype=torch.float32)
    try:
        encoder = CLIPTextModel.from_pretrained(os.path.join(models_dir, "encoder"), dtype=torch.float32)
    except TypeError:  # transformers 4.x
        encoder = CLIPTextModel.from_pretrained(os.path.join(models_dir, "encoder"), torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(os.path.join(models_dir, "vae"), torch_dtype=torch.float32)
    with open(os.path.join(models_dir, "scheduler", "scheduler_config.json")) as f:
        sched_cfg = json.load(f)
    scheduler = make_scheduler(sched_cfg)
    for m in (unet, encoder, vae):
        m.eval()
    return unet, encoder, vae, scheduler


def make_pipeline(unet, encoder, vae, scheduler):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=encoder,
        tokenizer=None,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def decode_images(vae, latents):
    """VAE decode of final latents -> (raw decoder output, uint8 NHWC), RECIPE.md "Sampling"."""
    raw = vae.decode(latents / vae.config.scaling_factor).sample
    img = ((raw / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return raw, img.permute(0, 2, 3, 1).contiguous().numpy()
