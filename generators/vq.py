"""The LDM VQ-f4 first stage used by IDiff-Face, NegFaceDiff, AdaptDiff and UIFace.

IDiff-Face ships the LDM ``ffhq256`` VQModel split into two state dicts
(reference/generators.md §2.1, ``models/autoencoder/vqgan.py``):

* ``first_stage_encoder_state_dict.pt``: ``encoder.*`` + ``quant_conv.*`` (image → pre-quantisation latent);
* ``first_stage_decoder_state_dict.pt``: ``quantize.embedding.weight`` + ``post_quant_conv.*`` + ``decoder.*``;
  the decoder **quantises** its input to the nearest codebook vector first (``VectorQuantizer2``).

The modules below rebuild LDM's ``Encoder``/``Decoder`` (``ldm/modules/diffusionmodules/model.py``)
with the same parameter names so both files load strictly. The architecture comes from a
``first_stage_config.yaml`` beside the files when there is one (``params.ddconfig``, ``embed_dim``,
``n_embed``), else the ffhq256 VQ-f4 numbers. No latent scale factor is used.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from fr_bench.errors import InputError

ENCODER_FILE = "first_stage_encoder_state_dict.pt"
DECODER_FILE = "first_stage_decoder_state_dict.pt"
CONFIG_FILE = "first_stage_config.yaml"


@dataclass(frozen=True)
class VQConfig:
    """``ddconfig`` of the LDM first stage plus the quantiser size (defaults: ffhq256 VQ-f4)."""

    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    in_channels: int = 3
    resolution: int = 256
    z_channels: int = 3
    double_z: bool = False
    embed_dim: int = 3
    n_embed: int = 8192

    @property
    def factor(self) -> int:
        """Spatial down-sampling factor (4 for VQ-f4)."""
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "VQConfig":
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
            params = doc.get("params", doc)
            dd = dict(params["ddconfig"])
        except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as err:
            raise InputError(path, f"not a first-stage config with params.ddconfig ({type(err).__name__})") from None
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {k: v for k, v in dd.items() if k in known}
        for k in ("embed_dim", "n_embed"):
            if k in params:
                kwargs[k] = params[k]
        for k in ("ch_mult", "attn_resolutions"):
            if k in kwargs:
                kwargs[k] = tuple(kwargs[k] or ())
        return cls(**kwargs)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, ch, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN-swish-conv ×2 with a 1×1 ``nin_shortcut`` when the width changes (no time embedding)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1×1-conv q, k, v, proj_out."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).flatten(2).transpose(1, 2)[:, None] for m in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)[:, 0]  # scale c^-1/2 as in LDM
        return x + self.proj_out(a.transpose(1, 2).reshape(b, c, h, w))


class _Level(nn.Module):
    """A resolution level: ``block`` (ResnetBlocks), ``attn`` and an optional resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Resample(nn.Module):
    def __init__(self, ch: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=stride, padding=0 if stride == 2 else 1)


class _Mid(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch)
        self.attn_1 = AttnBlock(ch)
        self.block_2 = ResnetBlock(ch, ch)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """LDM Encoder (``double_z`` selects 2·z_channels outputs)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = (1, *cfg.ch_mult)
        res = cfg.resolution
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for i, m in enumerate(cfg.ch_mult):
            level = _Level()
            block_in, block_out = cfg.ch * in_mult[i], cfg.ch * m
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = _Resample(block_in, 2)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(block_in)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for j, blk in enumerate(level.block):
                h = blk(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample.conv(F.pad(h, (0, 1, 0, 1)))  # LDM's asymmetric padding
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """LDM Decoder: conv_in, mid, up levels (num_res_blocks + 1 ResnetBlocks each), norm_out, conv_out."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in)
        levels: list[_Level] = []
        for i in reversed(range(n)):
            level = _Level()
            block_out = cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = _Resample(block_in, 1)
                res *= 2
            levels.insert(0, level)  # up.0 is the finest level, as in LDM
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for j, blk in enumerate(level.block):
                h = blk(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook lookup (``VectorQuantizer2`` at inference: argmin of ‖z‖² + ‖e‖² − 2 z·e)."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        zf = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        e = self.embedding.weight
        d = zf.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * zf @ e.t()
        zq = self.embedding(d.argmin(1)).view(z.shape[0], z.shape[2], z.shape[3], z.shape[1]).permute(0, 3, 1, 2)
        return z + (zq - z)  # the reference's straight-through expression, for the same rounding


class VQEncoder(nn.Module):
    """``encoder`` → ``quant_conv``: image in [−1, 1] → pre-quantisation latent."""

    def __init__(self, cfg: VQConfig = VQConfig()):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels if cfg.double_z else cfg.z_channels, cfg.embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))


class VQDecoder(nn.Module):
    """``quantize`` → ``post_quant_conv`` → ``decoder``: latent → image in about [−1, 1]."""

    def __init__(self, cfg: VQConfig = VQConfig()):
        super().__init__()
        self.config = cfg
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    def forward(self, h: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.quantize(h) if quantize else h))


# ------------------------------------------------------------------------------------------ loading


def strict_load(module: nn.Module, state: Any, path: str | Path, what: str) -> None:
    """``load_state_dict(strict=True)`` whose failure names the first missing/unexpected/mis-shaped keys."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, f"not a {what} state dict (expected a mapping of parameter names to tensors)")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:5])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (file vs model; first: {'; '.join(shapes[:3])})")
        raise InputError(path, f"does not match the {what}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` (never executes pickled code); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable/unsafe file is the user's input problem
        from ..io import torch_load_problem

        raise InputError(path, f"cannot read as a torch state dict ({torch_load_problem(err)})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    return obj


def find_first_stage(search: list[Path]) -> tuple[Path, VQConfig]:
    """The folder among ``search`` holding the decoder state dict, and its VQConfig."""
    for folder in search:
        if (folder / DECODER_FILE).is_file():
            cfg_path = folder / CONFIG_FILE
            return folder, (VQConfig.from_yaml(cfg_path) if cfg_path.is_file() else VQConfig())
    raise InputError(search[0], f"VQ first stage not found: no {DECODER_FILE} in " + ", ".join(str(p) for p in search)
                     + " (put IDiff-Face's models/autoencoder files in the weights folder or set options.vq_dir)")


def load_vq_decoder(folder: str | Path, cfg: VQConfig | None = None) -> VQDecoder:
    return _load_first_stage(VQDecoder, Path(folder), DECODER_FILE, "VQ first-stage decoder", cfg)


def load_vq_encoder(folder: str | Path, cfg: VQConfig | None = None) -> VQEncoder:
    return _load_first_stage(VQEncoder, Path(folder), ENCODER_FILE, "VQ first-stage encoder", cfg)


def _load_first_stage(cls: Any, folder: Path, filename: str, what: str, cfg: VQConfig | None) -> Any:
    cfg = cfg or (VQConfig.from_yaml(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else VQConfig())
    model = cls(cfg)
    strict_load(model, read_state_dict(folder / filename), folder / filename, what)
    return model.eval()
