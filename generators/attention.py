"""Swappable attention processors for the IDiff-Face-family UNet, and UIFace's attention maths.

A processor is called by each :class:`~fr_bench.generators.idiff_unet.MultiHeadAttention` as
``processor(attn, q, k, v)`` with q ``[B, h, Lq, d]`` and k, v ``[B, h, Lk, d]`` (heads already split)
and returns the per-head output ``[B, h, Lq, d]``; ``ConditionalUNet.set_attn_processor`` installs them
(one object everywhere, or one per module path), as diffusers does for its UNets.

* :class:`AttnProcessor` — the default: fused ``scaled_dot_product_attention``; no attention map is
  ever materialised.
* UIFace (reference/generators.md §5.3; Tencent/TFace ``generation/uiface`` ``nn.py::qkv_attention``,
  ``ddpm.py::get_attn_map``/``calculate_rmse``) needs three more, which share an
  :class:`AttentionStore` between the empty-context pass and the identity-conditioned pass of a step:

  - :class:`RecordSelfQK` (empty pass) keeps the self-attention q, k; :class:`InjectSelfQK`
    (conditional pass) attends with them: softmax(q_e·k_eᵀ/√d)·v_c, which is the reference's
    "replace the pre-softmax self-attention logits by the empty pass's" (paper Eq. 6) computed with
    the fused kernel — the L×L map is never built;
  - :class:`RecordCross` (empty pass) computes the small cross-attention logits (Lq × 32 context
    tokens) for the adaptive-switch map (:func:`cross_attention_map`) and/or for the renormalisation,
    and still returns the fused result;
  - :class:`RenormCross` (conditional pass) rewrites the conditional cross-attention logits with
    :func:`inject_cross_logits` (paper Eq. 7, or the released code's 0.5/0.5 blend) before the softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from .idiff_unet import MultiHeadAttention

CrossMode = Literal["paper", "released"]


class AttnProcessor:
    """Default processor: the fused attention kernel (scale 1/√d, the reference's (d^-1/4)² on q and k)."""

    def __call__(self, attn: "MultiHeadAttention", q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


DEFAULT_PROCESSOR = AttnProcessor()


# ------------------------------------------------------------------------------------------- maths
def attention_logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Pre-softmax logits (q·s)(k·s)ᵀ with s = d^-1/4, as the reference scales them; fp32 ``[B, h, Lq, Lk]``."""
    s = q.shape[-1] ** -0.25
    return (q.float() * s) @ (k.float() * s).transpose(-1, -2)


def logit_stats(logits: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased, as ``torch.std``) standard deviation along ``dim``: -1 = per query over the
    keys (the released code), -2 = per key over the spatial queries (the paper's Eq. 6)."""
    return logits.mean(dim=dim, keepdim=True), logits.std(dim=dim, keepdim=True)


def renormalize(source: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Standardise ``source`` along ``dim`` (see :func:`logit_stats`), then give it ``mean`` and ``std``."""
    mu, sigma = logit_stats(source, dim)
    # a constant row (σ = 0) stays constant instead of becoming NaN; its softmax is uniform either way
    return (source - mu) / sigma.clamp_min(torch.finfo(sigma.dtype).tiny) * std + mean


def inject_cross_logits(cond: torch.Tensor, empty: torch.Tensor | None = None, *, mode: CrossMode = "paper",
                        blend: float = 0.5, empty_stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """UIFace's cross-attention injection on logits ``[…, Lq, Lk]`` of the conditional and empty passes.

    * ``paper`` (Eq. 6–7): the empty-context map, standardised with its own mean and std "along the
      spatial dimensions" — per head and context token, over the image positions (queries) — and given
      the conditional map's: (A_e − μ_e)/σ_e · σ_c + μ_c. Applied to the pre-softmax logits, like the
      released code, so each query's weights stay a softmax over the context tokens.
    * ``released`` (``nn.py::qkv_attention``, ``negative=True``): the *conditional* map, renormalised per
      query over the context tokens to ``blend``·(empty stats) + (1 − ``blend``)·(conditional stats);
      the code hard-codes 0.5.

    ``empty_stats`` (mean, std) may replace ``empty`` in ``released`` mode.
    """
    if mode == "paper":
        if empty is None:
            raise ValueError("paper-mode cross-attention injection needs the empty pass's logits")
        mu_c, sd_c = logit_stats(cond, -2)
        return renormalize(empty, mu_c, sd_c, -2)
    mu_c, sd_c = logit_stats(cond)
    if mode == "released":
        mu_e, sd_e = empty_stats if empty_stats is not None else logit_stats(empty)  # type: ignore[arg-type]
        return renormalize(cond, blend * mu_e + (1 - blend) * mu_c, blend * sd_e + (1 - blend) * sd_c)
    raise ValueError(f"unknown cross-attention injection mode {mode!r}")


def cross_attention_map(logits: torch.Tensor, size: int) -> torch.Tensor:
    """One layer's map for the adaptive switch (paper §3.3; ``get_attn_map``): ``[B, h, L, N]`` → ``[B, size, size]``.

    Softmax over the *spatial* (query) axis, mean over the context tokens, then over heads, divided
    by each sample's maximum, bilinearly resized (align_corners=False) and clamped to [0, 1].
    """
    b, _, n_q, _ = logits.shape
    side = math.isqrt(n_q)
    if side * side != n_q:
        raise ValueError(f"attention map over {n_q} queries is not square")
    m = torch.softmax(logits.float(), dim=-2).mean(dim=-1).mean(dim=1)
    m = m / m.amax(dim=1, keepdim=True)
    m = F.interpolate(m.view(b, 1, side, side), size=(size, size), mode="bilinear", align_corners=False)
    return m[:, 0].clamp(0, 1)


def average_maps(maps: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers, then min-max normalised per sample (``[B, S, S]``)."""
    m = torch.stack(maps, dim=1).mean(dim=1)
    flat = m.reshape(len(m), -1)
    lo, hi = flat.amin(dim=1)[:, None, None], flat.amax(dim=1)[:, None, None]
    return (m - lo) / (hi - lo)


def map_change(prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    """Per-sample change between consecutive maps: mean over pixels of √((a − b)²) (``calculate_rmse``)."""
    return torch.sqrt(F.mse_loss(prev, cur, reduction="none")).mean(dim=(1, 2))


# -------------------------------------------------------------------------------------- processors
@dataclass
class AttentionStore:
    """What the empty-context pass of a step leaves for the conditional pass (keyed by module path)."""

    map_size: int = 32
    self_qk: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    cross_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    cross_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    maps: list[torch.Tensor] = field(default_factory=list)

    def clear(self) -> None:
        self.self_qk.clear()
        self.cross_logits.clear()
        self.cross_stats.clear()
        self.maps.clear()

    def switch_map(self) -> torch.Tensor:
        """The averaged, normalised cross-attention map of the pass that recorded maps."""
        if not self.maps:
            raise RuntimeError("no cross-attention maps were recorded in this pass")
        return average_maps(self.maps)


class _Stored(AttnProcessor):
    def __init__(self, store: AttentionStore, name: str):
        self.store = store
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class RecordSelfQK(_Stored):
    """Empty pass: keep this layer's self-attention q and k; output from the fused kernel."""

    def __call__(self, attn, q, k, v):
        self.store.self_qk[self.name] = (q, k)
        return F.scaled_dot_product_attention(q, k, v)


class InjectSelfQK(_Stored):
    """Conditional pass: attention weights of the empty pass on this pass's values (fused, Eq. 6)."""

    def __call__(self, attn, q, k, v):
        q_e, k_e = self.store.self_qk[self.name]
        return F.scaled_dot_product_attention(q_e, k_e, v)


class RecordCross(_Stored):
    """Empty pass: cross-attention logits → switch map and/or what :class:`RenormCross` needs."""

    def __init__(self, store: AttentionStore, name: str, *, maps: bool, keep: Literal["none", "logits", "stats"]):
        super().__init__(store, name)
        self.maps = maps
        self.keep = keep

    def __call__(self, attn, q, k, v):
        logits = attention_logits(q, k)  # Lq × (32 context tokens): small
        if self.maps:
            self.store.maps.append(cross_attention_map(logits, self.store.map_size))
        if self.keep == "logits":
            self.store.cross_logits[self.name] = logits
        elif self.keep == "stats":
            self.store.cross_stats[self.name] = logit_stats(logits)
        return F.scaled_dot_product_attention(q, k, v)


class RenormCross(_Stored):
    """Conditional pass: softmax of the injected cross-attention logits (:func:`inject_cross_logits`)."""

    def __init__(self, store: AttentionStore, name: str, *, mode: CrossMode, blend: float):
        super().__init__(store, name)
        self.mode = mode
        self.blend = blend

    def __call__(self, attn, q, k, v):
        logits = inject_cross_logits(attention_logits(q, k), self.store.cross_logits.get(self.name), mode=self.mode,
                                     blend=self.blend, empty_stats=self.store.cross_stats.get(self.name))
        weights = torch.softmax(logits, dim=-1).to(v.dtype)
        return weights @ v
