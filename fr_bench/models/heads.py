"""Margin-softmax classification heads: ArcFace, CosFace, AdaFace and the combined margin.

Every head keeps one class-centre matrix ``weight`` (``[num_classes, dim]``, N(0, 0.01) as in
arcface_torch's ``PartialFC_V2`` and IDiff-Face's heads), L2-normalises embeddings and centres and
returns **scaled fp32 logits** for a plain cross-entropy. The margin maths always runs in float32,
with autocast switched off, whatever precision the backbone ran in: at s = 64 a bf16 logit has a
resolution of 0.25, which would swallow a 0.35 margin.

Formulas (θ = arccos of the target cosine; non-target logits are s·cos θ_j):

* CosFace (s, m): s·(cos θ − m).
* ArcFace (s, m): s·cos(θ + m). ``straight_through=True`` reproduces arcface_torch, which applies the
  margin inside ``torch.no_grad()`` so the backward pass treats it as the identity (∂logit/∂cos = s);
  the default is the textbook gradient (IDiff-Face's ArcFace). cos(θ + m) stops decreasing once
  θ + m > π; two fallbacks from the original ArcFace code keep the target logit monotone there:
  ``th_mm=True`` (TFace's default, insightface's ``easy_margin=False``) uses cos θ − sin(π − m)·m
  whenever cos θ ≤ cos(π − m), and ``easy_margin=True`` applies the margin only where cos θ > 0.
* Combined (s, m1, m2, m3): s·(cos(m1·θ + m2) − m3) — insightface's combined margin; (1, 0.5, 0) is
  ArcFace, (1, 0, 0.35) CosFace.
* AdaFace (s, m, h, t_alpha): the feature norm ‖z‖ (clipped to [0.001, 100], detached) is
  standardised by exponential moving averages of the batch mean and (unbiased) std of the norms —
  updated *before* use with weight ``t_alpha`` — times h, clipped to [−1, 1] = g. Target logit:
  s·(cos(clip(θ − m·g, ε, π − ε)) − (m + m·g)), with cosines clamped to [−1+ε, 1−ε], ε = 1e-3
  (mk-minchul/AdaFace ``head.py``). The statistics update only in training mode.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _onehot(like: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # scatter, not F.one_hot: one_hot validates the labels on the host (a sync on CUDA)
    return torch.zeros_like(like, dtype=torch.bool).scatter_(1, labels.view(-1, 1), True)


class MarginHead(nn.Module):
    """Class centres + a margin on the target logit; ``forward(emb, labels) -> fp32 logits``."""

    def __init__(self, dim: int, num_classes: int, s: float = 64.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError("a margin head needs at least 2 classes")
        self.dim = dim
        self.num_classes = num_classes
        self.s = float(s)
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """Cosine between each (fp32) embedding and each class centre, clamped to [−1, 1]."""
        return F.linear(F.normalize(emb, dim=1), F.normalize(self.weight.float(), dim=1)).clamp(-1.0, 1.0)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The target logits' margin transform; the plain (margin-free) head returns ``cos`` as is."""
        return cos

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(emb.device.type, enabled=False):
            emb = emb.float()
            cos = self.cosine(emb)
            return self.margin(cos, labels, emb)

    @staticmethod
    def _replace_target(cos: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``cos`` with each row's label column replaced by ``target`` (out of place, autograd-safe)."""
        return torch.where(_onehot(cos, labels), target.unsqueeze(1), cos)

    @staticmethod
    def _target(cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cos.gather(1, labels.view(-1, 1)).squeeze(1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_classes={self.num_classes}, s={self.s}"


class CosFace(MarginHead):
    def __init__(self, dim: int, num_classes: int, s: float = 64.0, m: float = 0.35):
        super().__init__(dim, num_classes, s)
        self.m = float(m)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.s * self._replace_target(cos, labels, self._target(cos, labels) - self.m)


class CombinedMargin(MarginHead):
    """s·(cos(m1·θ + m2) − m3) on the target; analytic gradient (θ from a slightly clamped cosine)."""

    _CLAMP = 1.0 - 1e-7  # d arccos/dx is infinite at ±1

    def __init__(self, dim: int, num_classes: int, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0):
        super().__init__(dim, num_classes, s)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)

    def target_logit(self, t: torch.Tensor) -> torch.Tensor:
        if self.m1 == 1.0 and self.m2 == 0.0:
            return t - self.m3
        theta = torch.acos(t.clamp(-self._CLAMP, self._CLAMP))
        return torch.cos(self.m1 * theta + self.m2) - self.m3

    def margin(self, cos: torch.Tensor, labels: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.s * self._replace_target(cos, labels, self.target_logit(self._target(cos, labels)))


class ArcFace(CombinedMargin):
    """Additive angular margin; ``straight_through`` = arcface_torch's identity-gradient margin;
    ``th_mm`` / ``easy_margin`` = the original code's fallbacks where θ + m would pass π."""

    def __init__(self, dim: int, num_classes: int, s: float = 64.0, m: float = 0.5, straight_through: bool = False,
                 th_mm: bool = False, easy_margin: bool = False):
        super().__init__(dim, num_classes, s, 1.0, m, 0.0)
        if th_mm and easy_margin:
            raise ValueError("ArcFace takes one fallback: th_mm or easy_margin, not both")
        self.m = float(m)
        self.straight_through = bool(straight_through)
        self.th_mm, self.easy_margin = bool(th_mm), bool(easy_margin)
        self.th = math.cos(math.pi - self.m)
        self.mm = math.sin(math.pi - self.m) * self.m

    def target_logit(self, t: torch.Tensor) -> torch.Tensor:
        if self.straight_through:
            with torch.no_grad():
                shifted = torch.cos(torch.acos(t) + self.m)
            out = t + (shifted - t.detach())  # value cos(θ+m), gradient of t
        else:
            out = super().target_logit(t)
        if self.easy_margin:
            return torch.where(t > 0, out, t)
        if self.th_mm:
            return torch.where(t > self.th, out, t - self.mm)
        return out

    def extra_repr(self) -> str:
        flags = "".join(f", {k}=True" for k in ("straight_through", "th_mm", "easy_margin") if getattr(self, k))
        return f"{super().extra_repr()}, m={self.m}{flags}"


class AdaFace(MarginHead):
    """Quality-adaptive margin (Kim et al. 2022) with EMA statistics of the feature norms."""

    eps = 1e-3

    def __init__(self, dim: int, num_classes: int, s: float = 64.0, m: float = 0.4, h: float = 0.333, t_alpha: float = 0.01):
        super().__init__(dim, num_classes, s)
        self.m, self.h, self.t_alpha = float(m), float(h), float(t_alpha)
        self.register_buffer("t", torch.zeros(1))  # kept for state-dict parity with the reference head
        self.register_buffer("batch_mean", torch.ones(1) * 20)
        self.register_buffer("batch_std", torch.ones(1) * 100)

    def margin_scaler(self, norms: torch.Tensor) -> torch.Tensor:
        """g = clip(h·(‖z‖ − μ)/(σ + ε), −1, 1), updating μ, σ first when training."""
        safe = norms.clamp(0.001, 100).detach()
        if self.training:
            with torch.no_grad():
                std = safe.std() if safe.numel() > 1 else torch.zeros((), device=safe.device)
                self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * safe.mean())
                self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * std)
        g = (safe - self.batch_mean) / (self.batch_std + self.eps)
        return (g * self.h).clamp(-1.0, 1.0)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        cos = cos.clamp(-1 + self.eps, 1 - self.eps)
        g = self.margin_scaler(emb.norm(dim=1))
        onehot = _onehot(cos, labels).to(cos.dtype)
        theta = torch.acos(cos) + onehot * (-self.m * g).unsqueeze(1)
        out = torch.cos(theta.clamp(self.eps, math.pi - self.eps)) - onehot * (self.m + self.m * g).unsqueeze(1)
        return self.s * out


HEADS: dict[str, type[MarginHead]] = {"arcface": ArcFace, "cosface": CosFace, "adaface": AdaFace, "combined": CombinedMargin}

#: recipe keys each head takes (besides ``type``)
HEAD_PARAMS: dict[str, tuple[str, ...]] = {
    "arcface": ("s", "m", "straight_through", "th_mm", "easy_margin"),
    "cosface": ("s", "m"),
    "adaface": ("s", "m", "h", "t_alpha"),
    "combined": ("s", "m1", "m2", "m3"),
}


def build_head(kind: str, dim: int, num_classes: int, **params: Any) -> MarginHead:
    """Build a head by name; ``params`` must be keys of :data:`HEAD_PARAMS` for that head."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; known: {', '.join(HEADS)}")
    unknown = set(params) - set(HEAD_PARAMS[kind])
    if unknown:
        raise ValueError(f"head {kind!r} takes {', '.join(HEAD_PARAMS[kind])}, not {', '.join(sorted(unknown))}")
    return HEADS[kind](dim, num_classes, **params)
