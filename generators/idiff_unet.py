"""The IDiff-Face conditional UNet ("CA" conditioning), re-implemented for fast sampling.

The module tree and parameter names follow the released IDiff-Face checkpoints
(``eps_model.image_proj``, ``eps_model.down.{i}.res.norm1`` …, reference/generators.md §2.1–2.2), so a
released ``checkpoints/ema_averaged_model.ckpt`` loads **strictly**. The architecture numbers come
from the model folder's ``.hydra/config.yaml`` (the ``model`` section of the training config).

What differs from the reference is only how the same maths is executed:

* attention uses ``F.scaled_dot_product_attention`` (the reference: einsum with q·s, k·s,
  s = d^-1/4, softmax in fp32) — the same function up to float rounding;
* the context path (``context_emb`` → per block ``c_proj_in`` → ``c_norm`` → cross-attention K/V) does not
  depend on x or t, so :meth:`ConditionalUNet.encode_context` computes it once per batch and the
  sampler reuses it at every step; the numbers are the ones the reference recomputes each step.

Every :class:`MultiHeadAttention` hands its q, k, v (heads split) to a swappable *processor* object,
diffusers style (:meth:`ConditionalUNet.set_attn_processor`); the default
(:class:`~fr_bench.generators.attention.AttnProcessor`) is the fused kernel above, and samplers that
must read or rewrite attention (UIFace) install their own (``generators/attention.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fr_bench.errors import InputError

from .attention import DEFAULT_PROCESSOR, AttnProcessor

# ------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class UNetConfig:
    """Constructor arguments of the reference ``ConditionalUNet`` (names as in its YAML)."""

    input_channels: int = 3
    initial_channels: int = 96
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 2)
    is_attention: tuple[bool, ...] = (False, True, True, True)
    attention_heads: int = -1
    attention_head_channels: int = 32
    n_blocks_per_resolution: int = 2
    condition_type: str = "CA"
    is_context_conditional: bool = True
    n_context_classes: int = 0
    context_input_channels: int = 512
    context_channels: int = 256
    learn_empty_context: bool = False
    context_dropout_probability: float = 0.25  # CPD: train-time only, a no-op when sampling
    unconditioned_probability: float = 0.0  # UIFace: train-time empty-context rate, a no-op when sampling

    @classmethod
    def from_mapping(cls, cfg: dict[str, Any], source: str | Path) -> "UNetConfig":
        """Build from the ``model`` section of a training config; unsupported settings are InputErrors."""
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in cfg.items():
            if key == "_target_":
                continue
            if key not in known:
                raise InputError(source, f"model.{key}: unknown ConditionalUNet argument")
            kwargs[key] = value
        for key in ("channel_multipliers", "is_attention"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        try:
            out = cls(**kwargs)
            ints = [out.input_channels, out.initial_channels, out.attention_head_channels, out.n_blocks_per_resolution,
                    out.context_input_channels, out.context_channels, *out.channel_multipliers]
            if not all(isinstance(v, int) for v in ints):
                raise TypeError("channel numbers must be integers")
        except TypeError as err:
            raise InputError(source, f"model section: {err}") from None
        if str(out.condition_type).lower() != "ca" or not out.is_context_conditional:
            raise InputError(source, f"model.condition_type={out.condition_type!r}, is_context_conditional="
                             f"{out.is_context_conditional}: frbench implements the released cross-attention ('CA', "
                             "context-conditional) UNet only")
        if out.n_context_classes:
            raise InputError(source, "model.n_context_classes > 0 (class-label conditioning) is not supported")
        if len(out.is_attention) != len(out.channel_multipliers):
            raise InputError(source, "model.is_attention and model.channel_multipliers differ in length")
        return out


# ------------------------------------------------------------------------------------------ blocks


class SinusoidalTimeEmbedding(nn.Module):
    """cos/sin features of the integer timestep (cos first), then Linear-SiLU-Linear."""

    def __init__(self, n_channels: int, max_period: int = 10000):
        super().__init__()
        in_ch = n_channels // 4
        half = in_ch // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
        self.register_buffer("frequencies", freqs, persistent=False)  # not in released checkpoints
        self.lin1 = nn.Linear(in_ch, n_channels)
        self.lin2 = nn.Linear(n_channels, n_channels)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t[:, None].float() * self.frequencies[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.lin2(F.silu(self.lin1(emb)))


class _AdaGroupNorm(nn.Module):
    """Holds the GroupNorm whose output the residual block scales and shifts (key ``norm2.norm``)."""

    def __init__(self, groups: int, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)


class ResidualBlock(nn.Module):
    """GN-SiLU-conv, AdaGN(scale, shift from the time embedding only), SiLU-conv, + shortcut."""

    def __init__(self, in_ch: int, out_ch: int, time_ch: int, groups: int = 32):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb = nn.Sequential(nn.SiLU(), nn.Linear(time_ch, out_ch))
        self.scale_emb = nn.Linear(out_ch, out_ch)
        self.shift_emb = nn.Linear(out_ch, out_ch)
        self.norm2 = _AdaGroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        emb = self.time_emb(temb)
        scale = self.scale_emb(emb)[:, :, None, None]
        shift = self.shift_emb(emb)[:, :, None, None]
        h = (1 + scale) * self.norm2.norm(h) + shift
        h = self.conv2(F.silu(h))
        return h + self.shortcut(x)


class MultiHeadAttention(nn.Module):
    """1×1-Conv1d projections over (B, C, L) sequences; heads are contiguous channel groups."""

    def __init__(self, in_ch: int, n_heads: int, head_ch: int, kv_ch: int | None = None):
        super().__init__()
        self.n_heads = n_heads
        self.head_ch = head_ch
        inner = n_heads * head_ch
        kv_ch = in_ch if kv_ch is None else kv_ch
        self.to_q = nn.Conv1d(in_ch, inner, 1)
        self.to_k = nn.Conv1d(kv_ch, inner, 1)
        self.to_v = nn.Conv1d(kv_ch, inner, 1)
        self.proj_out = nn.Conv1d(inner, in_ch, 1)
        self.processor: AttnProcessor = DEFAULT_PROCESSOR  # (attn, q, k, v) -> heads output

    def _heads(self, y: torch.Tensor) -> torch.Tensor:
        b, _, n = y.shape  # (B, h·d, L) -> (B, h, L, d)
        return y.view(b, self.n_heads, self.head_ch, n).transpose(-1, -2)

    def key_value(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._heads(self.to_k(c)), self._heads(self.to_v(c))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        q = self._heads(self.to_q(x))
        k, v = self.key_value(x) if kv is None else kv
        a = self.processor(self, q, k, v)  # default: fused SDPA, scale 1/sqrt(d) == (d^-1/4)^2 of the reference
        b, h, n, d = a.shape
        return self.proj_out(a.transpose(-1, -2).reshape(b, h * d, n))


class SpatialEmbeddingCrossAttentionBlock(nn.Module):
    """Self-attention, cross-attention to 32 tokens made from the 256-d context, feed-forward; residual."""

    def __init__(self, in_ch: int, context_dim: int, n_heads: int, head_ch: int):
        super().__init__()
        if n_heads is None or n_heads <= 0:
            n_heads = in_ch // head_ch
        inner = n_heads * head_ch
        self.context_dim = context_dim
        self.n_tokens = head_ch  # the reference makes head_channels context tokens
        self.x_proj_in = nn.Conv2d(in_ch, inner, 1)
        self.x_proj_out = nn.Conv2d(inner, in_ch, 1)
        self.self_attention = MultiHeadAttention(inner, n_heads, head_ch)
        self.c_proj_in = nn.Linear(context_dim, context_dim * self.n_tokens)
        self.cross_attention = MultiHeadAttention(inner, n_heads, head_ch, kv_ch=context_dim)
        self.x_norm = nn.GroupNorm(32, inner)
        self.c_norm = nn.GroupNorm(32, context_dim)
        self.ff = nn.Sequential(nn.Linear(inner, inner * 4), nn.GELU(), nn.Linear(inner * 4, inner))

    def context_kv(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention K, V of the 256-d context ``c`` (B, context_dim); independent of x and t."""
        tokens = self.c_norm(self.c_proj_in(c).view(c.shape[0], self.context_dim, self.n_tokens))
        k, v = self.cross_attention.key_value(tokens)
        return k.contiguous(), v.contiguous()  # cached for all steps: lay them out for the attention kernel once

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, _, hgt, wid = x.shape
        h = self.x_proj_in(x).flatten(2)
        h = self.self_attention(self.x_norm(h)) + h
        h = self.cross_attention(self.x_norm(h), kv) + h
        h = self.ff(self.x_norm(h).transpose(1, 2)).transpose(1, 2) + h
        return self.x_proj_out(h.reshape(b, -1, hgt, wid)) + x


class LevelBlock(nn.Module):
    """A down or up block: ``res`` and, at attention resolutions, ``attn``."""

    def __init__(self, in_ch: int, out_ch: int, time_ch: int, context_ch: int, attention: bool, heads: int, head_ch: int):
        super().__init__()
        self.res = ResidualBlock(in_ch, out_ch, time_ch)
        self.has_attention = attention
        if attention:
            self.attn = SpatialEmbeddingCrossAttentionBlock(out_ch, context_ch, heads, head_ch)


class MiddleBlock(nn.Module):
    def __init__(self, ch: int, time_ch: int, context_ch: int, heads: int, head_ch: int):
        super().__init__()
        self.res1 = ResidualBlock(ch, ch, time_ch)
        self.attn = SpatialEmbeddingCrossAttentionBlock(ch, context_ch, heads, head_ch)
        self.res2 = ResidualBlock(ch, ch, time_ch)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1)


# ------------------------------------------------------------------------------------------ model


@dataclass
class ContextCache:
    """Per-batch context features: the 256-d embedding and each attention block's K, V."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]

    def cat(self, other: "ContextCache") -> "ContextCache":
        return ContextCache([(torch.cat([a, c]), torch.cat([b, d])) for (a, b), (c, d) in zip(self.kv, other.kv)])


class ConditionalUNet(nn.Module):
    """ε-prediction UNet of IDiff-Face (condition_type "CA"); parameter names as released."""

    def __init__(self, cfg: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = cfg
        mult = cfg.channel_multipliers
        n_res = len(mult)
        heads, head_ch = cfg.attention_heads, cfg.attention_head_channels
        time_ch = cfg.initial_channels * 4
        ctx_ch = cfg.context_channels

        self.image_proj = nn.Conv2d(cfg.input_channels, cfg.initial_channels, 3, padding=1)
        self.time_emb = SinusoidalTimeEmbedding(time_ch)
        self.context_emb = nn.Linear(cfg.context_input_channels, ctx_ch)
        if cfg.learn_empty_context:
            self.empty_context_embedding = nn.Parameter(torch.zeros(ctx_ch))
        else:  # the reference's fixed zeros(256): a plain tensor, not in the checkpoint
            self.register_buffer("empty_context_embedding", torch.zeros(ctx_ch), persistent=False)

        block = lambda i, o, att: LevelBlock(i, o, time_ch, ctx_ch, att, heads, head_ch)  # noqa: E731
        down: list[nn.Module] = []
        in_ch = out_ch = cfg.initial_channels
        for i in range(n_res):
            out_ch = in_ch * mult[i]  # multipliers compound level to level, as in the reference
            for _ in range(cfg.n_blocks_per_resolution):
                down.append(block(in_ch, out_ch, cfg.is_attention[i]))
                in_ch = out_ch
            if i < n_res - 1:
                down.append(Downsample(in_ch))
        self.down = nn.ModuleList(down)
        self.middle = MiddleBlock(out_ch, time_ch, ctx_ch, heads, head_ch)
        up: list[nn.Module] = []
        in_ch = out_ch
        for i in reversed(range(n_res)):
            for _ in range(cfg.n_blocks_per_resolution):
                up.append(block(in_ch + in_ch, in_ch, cfg.is_attention[i]))
            out_ch = in_ch // mult[i]
            up.append(block(in_ch + out_ch, out_ch, cfg.is_attention[i]))
            in_ch = out_ch
            if i > 0:
                up.append(Upsample(in_ch))
        self.up = nn.ModuleList(up)
        self.norm = nn.GroupNorm(32, cfg.initial_channels)
        self.final = nn.Conv2d(in_ch, cfg.input_channels, 3, padding=1)
        # in forward order: encode_context's K/V list is consumed in this order
        self._attn_blocks = [m.attn for m in self.down if isinstance(m, LevelBlock) and m.has_attention]
        self._attn_blocks.append(self.middle.attn)
        self._attn_blocks += [m.attn for m in self.up if isinstance(m, LevelBlock) and m.has_attention]

    # ------------------------------------------------------------------ attention processors
    def attention_modules(self) -> dict[str, MultiHeadAttention]:
        """Every attention module by its module path (``down.3.attn.self_attention`` …), in forward order."""
        return {name: m for name, m in self.named_modules() if isinstance(m, MultiHeadAttention)}

    @property
    def attn_processors(self) -> dict[str, AttnProcessor]:
        """The processor each attention module uses, by module path."""
        return {name: m.processor for name, m in self.attention_modules().items()}

    def set_attn_processor(self, processor: AttnProcessor | dict[str, AttnProcessor]) -> None:
        """Install one processor everywhere, or one per module path (every path must be given)."""
        mods = self.attention_modules()
        if isinstance(processor, dict):
            if set(processor) != set(mods):
                missing, extra = sorted(set(mods) - set(processor)), sorted(set(processor) - set(mods))
                raise ValueError(f"attention processors: missing {missing[:3]}, unknown {extra[:3]}")
            for name, m in mods.items():
                m.processor = processor[name]
        else:
            for m in mods.values():
                m.processor = processor

    def embed_context(self, context: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The 256-d context: ``context_emb(context)``, or the empty embedding when ``context`` is None."""
        if context is None:
            return self.empty_context_embedding.unsqueeze(0).expand(batch, -1)
        return self.context_emb(context)

    def encode_context(self, context: torch.Tensor | None, batch: int | None = None) -> ContextCache:
        """Everything the UNet computes from the context alone (reused across sampling steps).

        Each distinct context row is computed on its own (batch of one) and copied to its rows, so a
        row's features never depend on what else is in the batch (CPU GEMMs pick kernels by batch size).
        """
        if context is None:
            c = self.embed_context(None, int(batch or 1))[:1]
            kv = [blk.context_kv(c) for blk in self._attn_blocks]
            n = int(batch or 1)
            return ContextCache([(k.expand(n, *k.shape[1:]), v.expand(n, *v.shape[1:])) for k, v in kv])
        uniq, inverse = torch.unique(context, dim=0, return_inverse=True)
        per = [[blk.context_kv(self.context_emb(uniq[i : i + 1])) for blk in self._attn_blocks] for i in range(len(uniq))]
        return ContextCache([(torch.cat([p[j][0] for p in per])[inverse], torch.cat([p[j][1] for p in per])[inverse])
                             for j in range(len(self._attn_blocks))])

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                cache: ContextCache | None = None) -> torch.Tensor:
        """ε(x_t, t, context); pass ``cache`` (from :meth:`encode_context`) instead of ``context`` to reuse it.

        ``t`` is [B] or, when every row is at the same step (sampling), [1]: the time path then runs once.
        """
        kv = iter((cache if cache is not None else self.encode_context(context, len(x))).kv)
        temb = self.time_emb(t)
        x = self.image_proj(x)
        skips = [x]
        for m in self.down:
            if isinstance(m, Downsample):
                x = m.conv(x)
            else:
                x = m.res(x, temb)
                if m.has_attention:
                    x = m.attn(x, next(kv))
            skips.append(x)
        mid = self.middle
        x = mid.res2(mid.attn(mid.res1(x, temb), next(kv)), temb)
        for m in self.up:
            if isinstance(m, Upsample):
                x = m.conv(x)
            else:
                x = m.res(torch.cat((x, skips.pop()), dim=1), temb)
                if m.has_attention:
                    x = m.attn(x, next(kv))
        return self.final(F.silu(self.norm(x)))

