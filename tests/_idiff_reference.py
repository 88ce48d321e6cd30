"""An independent, literal re-statement of IDiff-Face's reference sampler maths, for tests and benchmarks.

Written from the facts in reference/generators.md §2 and the released code's behaviour (not its
text): ``ConditionalUNet`` with condition_type "CA" (``models/diffusion/unet.py``, ``nn.py``) and the
ancestral DDPM loop (``diffusion/ddpm.py``). It computes everything the way the reference does —
einsum attention with q·s and k·s (s = d^-1/4) and a float softmax, heads as contiguous channel
groups, the context path recomputed at every call — and keeps the released parameter names, so the
same state dict loads into it and into frbench's UNet.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class RefTimeEmbedding(nn.Module):
    def __init__(self, n_channels: int):
        super().__init__()
        self.n_in = n_channels // 4
        self.lin1 = nn.Linear(self.n_in, n_channels)
        self.lin2 = nn.Linear(n_channels, n_channels)

    def forward(self, t):
        half = self.n_in // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half).to(t.device)
        a = t[:, None].float() * freqs[None]
        e = torch.cat([torch.cos(a), torch.sin(a)], dim=-1)
        return self.lin2(torch.nn.functional.silu(self.lin1(e)))


class RefNorm2(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.norm = nn.GroupNorm(32, ch)


class RefRes(nn.Module):
    def __init__(self, cin, cout, tch):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb = nn.Sequential(nn.SiLU(), nn.Linear(tch, cout))
        self.scale_emb = nn.Linear(cout, cout)
        self.shift_emb = nn.Linear(cout, cout)
        self.norm2 = RefNorm2(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, t):
        silu = torch.nn.functional.silu
        h = self.conv1(silu(self.norm1(x)))
        emb = self.time_emb(t)
        scale = self.scale_emb(emb)[:, :, None, None]
        shift = self.shift_emb(emb)[:, :, None, None]
        h = (1 + scale) * self.norm2.norm(h) + shift
        h = self.conv2(silu(h))
        return h + self.shortcut(x)


class RefMHA(nn.Module):
    def __init__(self, cin, heads, hch, kv=None):
        super().__init__()
        self.heads = heads
        inner = heads * hch
        kv = cin if kv is None else kv
        self.to_q = nn.Conv1d(cin, inner, 1)
        self.to_k = nn.Conv1d(kv, inner, 1)
        self.to_v = nn.Conv1d(kv, inner, 1)
        self.proj_out = nn.Conv1d(inner, cin, 1)

    def forward(self, x, c=None):
        c = x if c is None else c
        q, k, v = self.to_q(x), self.to_k(c), self.to_v(c)
        bs, width, lq = q.shape
        n = self.heads
        q = q.reshape(bs * n, width // n, lq)
        k = k.reshape(bs * n, width // n, k.shape[-1])
        v = v.reshape(bs * n, width // n, v.shape[-1])
        s = 1 / math.sqrt(math.sqrt(width // n))
        w = torch.einsum("bct,bcs->bts", q * s, k * s)
        w = torch.softmax(w.float(), dim=-1).type(w.dtype)
        a = torch.einsum("bts,bcs->bct", w, v)
        a = a.reshape(bs, n * (width // n), lq)  # "(b n) c t -> b (n c) t"
        return self.proj_out(a)


class RefCrossBlock(nn.Module):
    def __init__(self, cin, cdim, heads, hch):
        super().__init__()
        if heads is None or heads <= 0:
            heads = cin // hch
        inner = heads * hch
        self.cdim = cdim
        self.x_proj_in = nn.Conv2d(cin, inner, 1)
        self.x_proj_out = nn.Conv2d(inner, cin, 1)
        self.self_attention = RefMHA(inner, heads, hch)
        self.c_proj_in = nn.Linear(cdim, cdim * hch)
        self.cross_attention = RefMHA(inner, heads, hch, kv=cdim)
        self.x_norm = nn.GroupNorm(32, inner)
        self.c_norm = nn.GroupNorm(32, cdim)
        self.ff = nn.Sequential(nn.Linear(inner, inner * 4), nn.GELU(), nn.Linear(inner * 4, inner))

    def forward(self, x, c):
        b, _, h, w = x.shape
        x_in = x
        x = self.x_proj_in(x).reshape(b, -1, h * w)
        c = self.c_proj_in(c).reshape(b, self.cdim, -1)  # "b (n d) -> b n d", n = context_dim
        c = self.c_norm(c)
        x = self.self_attention(self.x_norm(x)) + x
        x = self.cross_attention(self.x_norm(x), c) + x
        x = self.ff(self.x_norm(x).permute(0, 2, 1).contiguous()).permute(0, 2, 1).contiguous() + x
        x = self.x_proj_out(x.reshape(b, -1, h, w))
        return x + x_in


class RefLevel(nn.Module):
    def __init__(self, cin, cout, tch, cdim, att, heads, hch):
        super().__init__()
        self.att = att
        self.res = RefRes(cin, cout, tch)
        if att:
            self.attn = RefCrossBlock(cout, cdim, heads, hch)

    def forward(self, x, t, c):
        x = self.res(x, t)
        return self.attn(x, c) if self.att else x


class RefMiddle(nn.Module):
    def __init__(self, ch, tch, cdim, heads, hch):
        super().__init__()
        self.res1 = RefRes(ch, ch, tch)
        self.attn = RefCrossBlock(ch, cdim, heads, hch)
        self.res2 = RefRes(ch, ch, tch)

    def forward(self, x, t, c):
        return self.res2(self.attn(self.res1(x, t), c), t)


class RefDown(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 2, 1)


class RefUp(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.ConvTranspose2d(ch, ch, 4, 2, 1)


class RefConditionalUNet(nn.Module):
    """Keyword arguments as in the released ``model`` YAML section (CA conditioning only)."""

    def __init__(self, input_channels=3, initial_channels=96, channel_multipliers=(1, 2, 2, 2),
                 is_attention=(False, True, True, True), attention_heads=-1, attention_head_channels=32,
                 n_blocks_per_resolution=2, context_input_channels=512, context_channels=256,
                 learn_empty_context=False, **_ignored):
        super().__init__()
        tch = initial_channels * 4
        self.image_proj = nn.Conv2d(input_channels, initial_channels, 3, padding=1)
        self.time_emb = RefTimeEmbedding(tch)
        self.context_emb = nn.Linear(context_input_channels, context_channels)
        if learn_empty_context:
            self.empty_context_embedding = nn.Parameter(torch.randn(context_channels))
        else:
            self.empty_context_embedding = torch.zeros(context_channels)
        args = (tch, context_channels)
        hh = (attention_heads, attention_head_channels)
        down = []
        cin = cout = initial_channels
        n = len(channel_multipliers)
        for i in range(n):
            cout = cin * channel_multipliers[i]
            for _ in range(n_blocks_per_resolution):
                down.append(RefLevel(cin, cout, *args, is_attention[i], *hh))
                cin = cout
            if i < n - 1:
                down.append(RefDown(cin))
        self.down = nn.ModuleList(down)
        self.middle = RefMiddle(cout, *args, *hh)
        up = []
        cin = cout
        for i in reversed(range(n)):
            cout = cin
            for _ in range(n_blocks_per_resolution):
                up.append(RefLevel(cin + cout, cout, *args, is_attention[i], *hh))
            cout = cin // channel_multipliers[i]
            up.append(RefLevel(cin + cout, cout, *args, is_attention[i], *hh))
            cin = cout
            if i > 0:
                up.append(RefUp(cin))
        self.up = nn.ModuleList(up)
        self.norm = nn.GroupNorm(32, initial_channels)
        self.final = nn.Conv2d(cin, input_channels, 3, padding=1)

    def forward(self, x, t, context=None):
        t = self.time_emb(t)
        x = self.image_proj(x)
        if context is None:
            c = self.empty_context_embedding.unsqueeze(0).repeat(len(x), 1).to(x.device)
        else:
            c = self.context_emb(context)
        h = [x]
        for m in self.down:
            x = m.conv(x) if isinstance(m, RefDown) else m(x, t, c)
            h.append(x)
        x = self.middle(x, t, c)
        for m in self.up:
            if isinstance(m, RefUp):
                x = m.conv(x)
            else:
                x = m(torch.cat((x, h.pop()), dim=1), t, c)
        return self.final(torch.nn.functional.silu(self.norm(x)))


def ref_schedule(T: int = 1000) -> dict[str, torch.Tensor]:
    """The DDPM wrapper's buffers for the linear schedule, by the reference's formulas."""
    betas = torch.linspace(1000 / T * 0.0001, 1000 / T * 0.02, T, dtype=torch.float32)
    alphas = 1 - betas
    alpha_bars = torch.cumsum(torch.log(alphas), dim=0).exp()
    return {
        "betas": betas,
        "alphas": alphas,
        "sigmas": betas.sqrt(),
        "sqrt_alphas_inv": 1 / alphas.sqrt(),
        "alpha_bars": alpha_bars,
        "sqrt_alpha_bars": alpha_bars.sqrt(),
        "sqrt_one_minus_alpha_bars": (1 - alpha_bars).sqrt(),
        "one_minus_alphas_over_sqrt_one_minus_alpha_bars": (1 - alphas) / (1 - alpha_bars).sqrt(),
    }


class RefDDPM(nn.Module):
    """eps_model + schedule buffers: its state_dict has the released checkpoint's keys."""

    def __init__(self, eps_model: nn.Module, T: int = 1000):
        super().__init__()
        self.eps_model = eps_model
        self.T = T
        for k, v in ref_schedule(T).items():
            self.register_buffer(k, v)

    def ddpm_update(self, i: int, x_t, eps, z):
        """One step of the reference loop at index i (z ignored for i ≤ 1)."""
        z = z if i > 1 else 0
        return self.sqrt_alphas_inv[i] * (x_t - eps * self.one_minus_alphas_over_sqrt_one_minus_alpha_bars[i]) + self.sigmas[i] * z


# ----------------------------------------------------------------------------- tiny released layout
TINY_MODEL = dict(initial_channels=32, channel_multipliers=[1, 2], is_attention=[False, True], attention_heads=-1,
                  attention_head_channels=32, n_blocks_per_resolution=2, context_input_channels=512, context_channels=32)
TINY_VQ = dict(ch=32, out_ch=3, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0, in_channels=3,
               resolution=16, z_channels=3, double_z=False)

HYDRA_TEMPLATE = """\
latent_diffusion: true
constants:
  seed: 0
  image_size: {image_size}
  input_channels: 3
  n_classes: 0
training:
  precision: 16
  batch_size: 64
  context_dropout: 0.0
diffusion:
  _target_: diffusion.ddpm.DenoisingDiffusionProbabilisticModel
  eps_model: ${{model}}
  T: {T}
  schedule_type: linear
  schedule_k: 1
  schedule_beta_min: 0.0
  schedule_beta_max: 0.1
  criterion:
    _target_: torch.nn.MSELoss
model:
  _target_: models.diffusion.unet.ConditionalUNet
  input_channels: ${{constants.input_channels}}
  initial_channels: {initial_channels}
  channel_multipliers: {channel_multipliers}
  is_attention: {is_attention}
  attention_heads: {attention_heads}
  attention_head_channels: {attention_head_channels}
  n_blocks_per_resolution: {n_blocks_per_resolution}
  condition_type: CA
  is_context_conditional: true
  n_context_classes: ${{constants.n_classes}}
  context_input_channels: {context_input_channels}
  context_channels: {context_channels}
  learn_empty_context: false
  context_dropout_probability: 0.25
dataset:
  _target_: utils.samples_with_embeddings_folder_dataset.SamplesWithEmbeddingsFolderDataset
  samples_root: ${{paths.data_root}}/ffhq_128
paths:
  data_root: /data
"""


def write_tiny_release(folder, seed: int = 0, T: int = 1000, image_size: int = 16):
    """A released-layout IDiff-Face model folder with a tiny reference UNet (random weights) and VQ files.

    Returns the RefDDPM whose state dict was saved (keys ``eps_model.*`` + schedule buffers).
    """
    from pathlib import Path

    import yaml

    from fr_bench.generators.vq import VQConfig, VQDecoder, VQEncoder

    folder = Path(folder)
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    (folder / ".hydra" / "config.yaml").write_text(HYDRA_TEMPLATE.format(T=T, image_size=image_size, **{
        k: (str(v).lower() if isinstance(v, list) and v and isinstance(v[0], bool) else v) for k, v in TINY_MODEL.items()}))
    torch.manual_seed(seed)
    ddpm = RefDDPM(RefConditionalUNet(input_channels=3, **TINY_MODEL), T=T).eval()
    with torch.no_grad():  # default init barely listens to the context; make identity visibly matter
        for name, p in ddpm.named_parameters():
            if name.endswith(("cross_attention.to_v.weight", "cross_attention.proj_out.weight")):
                p.mul_(5)
    torch.save(ddpm.state_dict(), folder / "checkpoints" / "ema_averaged_model.ckpt")
    cfg = VQConfig(**{**TINY_VQ, "ch_mult": tuple(TINY_VQ["ch_mult"]), "attn_resolutions": ()}, embed_dim=3, n_embed=64)
    dec, enc = VQDecoder(cfg), VQEncoder(cfg)
    with torch.no_grad():
        dec.quantize.embedding.weight.normal_()
    torch.save(dec.state_dict(), folder / "first_stage_decoder_state_dict.pt")
    torch.save(enc.state_dict(), folder / "first_stage_encoder_state_dict.pt")
    (folder / "first_stage_config.yaml").write_text(yaml.safe_dump({
        "target": "ldm.models.autoencoder.VQModelInterface",
        "params": {"embed_dim": 3, "n_embed": 64, "ddconfig": TINY_VQ, "lossconfig": {"target": "torch.nn.Identity"}}}))
    return ddpm
