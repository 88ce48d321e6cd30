"""An independent, literal re-statement of UIFace's released sampler, for tests and the speed benchmark.

Written from the facts in reference/generators.md §5 (Tencent/TFace ``generation/uiface``:
``diffusion/ddpm.py::sample_ddim_2stage``, ``get_attn_map``, ``calculate_rmse``;
``models/diffusion/nn.py::qkv_attention``; ``unet.py`` forward with ``condition_flag`` and the
source-map lists), not from its text. It runs on the reference-maths modules of
``_idiff_reference`` (einsum attention with q·s, k·s, s = d^-1/4; the context path recomputed at every
call), so the state dict it uses is the one frbench loads.

What the released code does, step by step (DDIM, skip T/50, η = 0, ``alphas_prev`` = [1, ᾱ_0, …]):

* t ≥ step_th: an empty-context pass, then a pass whose rows use their identity only if already
  flagged, with every block's self-attention logits replaced by the empty pass's; its output is used
  as is. Its cross-attention logits give one map per row; a row whose map moved by less than MSE_th
  since the previous step gets flagged (effective from the next step).
* t < step_th: empty pass, then an identity pass with the self-attention logits replaced and the
  cross-attention logits standardised and rescaled to 0.5·(empty) + 0.5·(own) statistics;
  ε = (1 + s)·ε_c − s·ε_∅.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml

from _idiff_reference import TINY_MODEL, TINY_VQ, RefConditionalUNet, RefDDPM, RefDown, RefUp, ref_schedule


# ------------------------------------------------------------------------------------ UNet with maps
def ref_attention(mha, x, c=None, src=None, negative=False, blend=0.5, paper=False):
    """One MultiHeadAttention call; returns (output, this call's own pre-softmax logits).

    ``paper=True`` swaps the released cross-attention rule for the paper's Eq. 6–7: the source
    (empty-pass) logits standardised along the spatial axis (per token) and given this call's own
    spatial mean and std.
    """
    c = x if c is None else c
    q, k, v = mha.to_q(x), mha.to_k(c), mha.to_v(c)
    bs, width, lq = q.shape
    n = mha.heads
    d = width // n
    q = q.reshape(bs * n, d, lq)
    k = k.reshape(bs * n, d, k.shape[-1])
    v = v.reshape(bs * n, d, v.shape[-1])
    s = 1 / math.sqrt(math.sqrt(d))
    own = torch.einsum("bct,bcs->bts", q * s, k * s)
    if src is None:
        logits = own
    elif negative and paper:
        logits = (src - src.mean(dim=1, keepdim=True)) / src.std(dim=1, keepdim=True) * own.std(dim=1, keepdim=True) \
            + own.mean(dim=1, keepdim=True)
    elif negative:  # cross-attention: standardise own logits, give them blended statistics
        mean, std = own.mean(dim=2, keepdim=True), own.std(dim=2, keepdim=True)
        t_mean = blend * src.mean(dim=2, keepdim=True) + (1 - blend) * mean
        t_std = blend * src.std(dim=2, keepdim=True) + (1 - blend) * std
        logits = (own - mean) / std * t_std + t_mean
    else:  # self-attention: the source pass's logits as they are
        logits = src
    w = torch.softmax(logits.float(), dim=-1).type(logits.dtype)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(bs, n * d, lq)
    return mha.proj_out(a), own


def ref_block(blk, x, c, src_self=None, src_cross=None, paper=False):
    b, _, h, w = x.shape
    x_in = x
    x = blk.x_proj_in(x).reshape(b, -1, h * w)
    c = blk.c_norm(blk.c_proj_in(c).reshape(b, blk.cdim, -1))
    y, self_map = ref_attention(blk.self_attention, blk.x_norm(x), src=src_self, negative=False)
    x = y + x
    y, cross_map = ref_attention(blk.cross_attention, blk.x_norm(x), c, src=src_cross, negative=True, paper=paper)
    x = y + x
    x = blk.ff(blk.x_norm(x).permute(0, 2, 1)).permute(0, 2, 1) + x
    return blk.x_proj_out(x.reshape(b, -1, h, w)) + x_in, self_map, cross_map


def ref_unet(unet: RefConditionalUNet, x, t, context=None, condition_flag=None, src_self=None, src_cross=None,
             paper=False):
    """ε and the per-block self/cross logits, with the reference's context rules."""
    temb = unet.time_emb(t)
    x = unet.image_proj(x)
    if context is None:
        c = unet.empty_context_embedding.unsqueeze(0).repeat(len(x), 1)
    else:
        c = unet.context_emb(context)
        if condition_flag is not None:
            c = c.clone()
            c[~condition_flag] = unet.empty_context_embedding
    self_maps, cross_maps = [], []

    def attend(blk, x):
        i = len(self_maps)
        x, sm, cm = ref_block(blk, x, c, src_self[i] if src_self else None, src_cross[i] if src_cross else None, paper)
        self_maps.append(sm)
        cross_maps.append(cm)
        return x

    skips = [x]
    for m in unet.down:
        if isinstance(m, RefDown):
            x = m.conv(x)
        else:
            x = m.res(x, temb)
            if m.att:
                x = attend(m.attn, x)
        skips.append(x)
    x = unet.middle.res2(attend(unet.middle.attn, unet.middle.res1(x, temb)), temb)
    for m in unet.up:
        if isinstance(m, RefUp):
            x = m.conv(x)
        else:
            x = m.res(torch.cat((x, skips.pop()), dim=1), temb)
            if m.att:
                x = attend(m.attn, x)
    return unet.final(torch.nn.functional.silu(unet.norm(x))), self_maps, cross_maps


def ref_attn_map(cross_maps, bs, img_size):
    """``get_attn_map``: one normalised map per row from the per-block cross logits."""
    per_layer = []
    for logits in cross_maps:
        _, lq, lk = logits.shape
        side = int(math.sqrt(lq))
        m = logits.reshape(bs, -1, lq, lk)
        m = torch.softmax(m, dim=-2).mean(dim=-1).mean(dim=1)
        m = m / m.max(dim=1, keepdim=True)[0]
        m = torch.nn.functional.interpolate(m.reshape(bs, 1, side, side), size=(img_size, img_size), mode="bilinear",
                                            align_corners=False).squeeze(1)
        per_layer.append(torch.clamp(m, min=0, max=1))
    m = torch.stack(per_layer, dim=1).mean(dim=1)
    hi = m.reshape(bs, -1).max(dim=-1)[0][:, None, None]
    lo = m.reshape(bs, -1).min(dim=-1)[0][:, None, None]
    return (m - lo) / (hi - lo)


def ref_rmse(a, b):
    return torch.mean(torch.sqrt(torch.nn.functional.mse_loss(a, b, reduction="none")), dim=(1, 2))


# ------------------------------------------------------------------------------------------ sampler
def ref_ddim_constants(T: int = 1000):
    ab = ref_schedule(T)["alpha_bars"]
    return ab, torch.cat((torch.tensor([1.0]), ab[:-1]), 0)


def ref_ddim_update(x_t, eps, i, skip, alpha_bars, alphas_prev):
    prev = i - skip
    a_t = alpha_bars[i]
    a_prev = alphas_prev[prev] if prev >= 0 else torch.tensor(1.0)
    b_t = 1 - a_t
    x0 = (x_t - b_t ** 0.5 * eps) / a_t ** 0.5
    eps = (x_t - a_t ** 0.5 * x0) / b_t ** 0.5
    return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps


@torch.no_grad()
def ref_sample_2stage(unet, x_T, context, *, cfg_scale=1.0, mse_th=0.006, step_th=500, ddim_step=50, img_size=32,
                      T=1000, history=True, paper=False):
    """``sample_ddim_2stage`` literally; returns x_0, each row's first identity timestep (−1: never) and the
    per-step map changes of the stage-1 steps ({t: [B]}).

    ``paper=True`` is frbench's reading of the paper instead: Eq. 7 as in :func:`ref_attention`, and rows
    switched during stage 1 get the stage-2 ε (CFG, both injections) at once.
    """
    alpha_bars, alphas_prev = (a.to(x_T.device) for a in ref_ddim_constants(T))
    n = len(x_T)
    skip = T // ddim_step
    x_t = x_T
    flag = torch.zeros(n, dtype=torch.bool, device=x_T.device)
    first_id = torch.full((n,), -1, dtype=torch.long)
    pre = None
    changes, xs = {}, []
    for i in reversed(range(0, T, skip)):
        t = torch.tensor(i).repeat(n).to(x_T.device)
        if i < step_th:
            eps_u, self_u, cross_u = ref_unet(unet, x_t, t, None)
            eps_c, _, _ = ref_unet(unet, x_t, t, context, src_self=self_u, src_cross=cross_u, paper=paper)
            eps = (1 + cfg_scale) * eps_c - cfg_scale * eps_u
            used = torch.ones(n, dtype=torch.bool)
        else:
            eps_u, self_u, cross_u = ref_unet(unet, x_t, t, None)
            eps, _, cross_b = ref_unet(unet, x_t, t, context, condition_flag=flag, src_self=self_u)
            used = flag.cpu().clone()
            if paper and flag.any():
                eps_c, _, _ = ref_unet(unet, x_t, t, context, src_self=self_u, src_cross=cross_u, paper=True)
                eps = torch.where(flag[:, None, None, None], (1 + cfg_scale) * eps_c - cfg_scale * eps_u, eps)
            amap = ref_attn_map(cross_b, n, img_size)
            if pre is not None:
                d = ref_rmse(pre, amap)
                changes[i] = d.cpu()
                flag[torch.logical_and(d < mse_th, ~flag)] = True
            pre = amap
        first_id[(first_id < 0) & used] = i
        x_t = ref_ddim_update(x_t, eps, i, skip, alpha_bars, alphas_prev)
        if history:  # the reference keeps every step's latent (and map) on the host
            xs.append(x_t.cpu().numpy())
    return x_t, first_id, changes


@torch.no_grad()
def ref_ddim_loop(unet, x_T, eps_fn, *, ddim_step=50, T=1000):
    """Plain DDIM (the same update) with ε from ``eps_fn(x_t, t_vector, step_index)``."""
    alpha_bars, alphas_prev = ref_ddim_constants(T)
    skip = T // ddim_step
    x_t = x_T
    for k, i in enumerate(reversed(range(0, T, skip))):
        t = torch.tensor(i).repeat(len(x_T))
        x_t = ref_ddim_update(x_t, eps_fn(x_t, t, k), i, skip, alpha_bars, alphas_prev)
    return x_t


# ------------------------------------------------------------------------------- tiny release files
TINY_UIFACE = {**TINY_MODEL, "learn_empty_context": True}


def tiny_model_yaml() -> str:
    """The model YAML the reference instantiates (``configs/model/unet_cond_ca_cpd25_uncond20.yaml`` shape)."""
    return yaml.safe_dump({"_target_": "models.diffusion.unet.ConditionalUNet", "input_channels": 3, **TINY_UIFACE,
                           "condition_type": "CA", "is_context_conditional": True, "n_context_classes": 0,
                           "context_dropout_probability": 0.25, "unconditioned_probability": 0.2}, sort_keys=False)


def write_vq(folder: Path) -> None:
    """Tiny LDM first-stage files (factor 2) with a spread-out codebook."""
    from fr_bench.generators.vq import VQConfig, VQDecoder

    cfg = VQConfig(**{**TINY_VQ, "ch_mult": tuple(TINY_VQ["ch_mult"]), "attn_resolutions": ()}, embed_dim=3, n_embed=64)
    dec = VQDecoder(cfg)
    with torch.no_grad():
        dec.quantize.embedding.weight.normal_()
    torch.save(dec.state_dict(), folder / "first_stage_decoder_state_dict.pt")
    (folder / "first_stage_config.yaml").write_text(yaml.safe_dump({
        "target": "ldm.models.autoencoder.VQModelInterface",
        "params": {"embed_dim": 3, "n_embed": 64, "ddconfig": TINY_VQ, "lossconfig": {"target": "torch.nn.Identity"}}}))


def tiny_reference_model(seed: int = 0) -> RefDDPM:
    """The reference DDPM wrapper around a tiny UIFace UNet (random weights, learnable empty context)."""
    torch.manual_seed(seed)
    ddpm = RefDDPM(RefConditionalUNet(input_channels=3, **TINY_UIFACE), T=1000).eval()
    with torch.no_grad():  # default init barely listens to the context or the attention; make both matter
        for name, p in ddpm.named_parameters():
            if name.endswith(("cross_attention.to_v.weight", "cross_attention.proj_out.weight",
                              "self_attention.proj_out.weight")):
                p.mul_(5)
            if name.endswith(("cross_attention.to_q.weight", "cross_attention.to_k.weight")):
                p.mul_(3)
    return ddpm


def write_tiny_uiface(folder: Path, seed: int = 0, layout: str = "module.eps_model.") -> RefDDPM:
    """``<folder>/uiface.ckpt`` (keys ``<layout>…`` + the wrapper's schedule buffers), the model YAML and VQ files."""
    folder.mkdir(parents=True, exist_ok=True)
    ddpm = tiny_reference_model(seed)
    state = {}
    for k, v in ddpm.state_dict().items():
        if k.startswith("eps_model."):
            state[layout + k[len("eps_model."):]] = v
        else:  # schedule buffers, with the DDP prefix when the layout has one
            state[("module." if layout.startswith("module.") else "") + k] = v
    torch.save(state, folder / "uiface.ckpt")
    (folder / "unet_cond_ca_tiny.yaml").write_text(tiny_model_yaml())
    write_vq(folder)
    return ddpm
