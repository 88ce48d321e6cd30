"""Guidance strategies for identity-conditioned ε models, as objects.

NegFaceDiff and AdaptDiff (EduardaCaldeira/NegFaceDiff ``diffusion/ddpm.py``) combine a positive and a
negative identity context: ε = (1 + w)·ε(x_t, t, p⁺) − w·ε(x_t, t, p⁻).

* :class:`NoGuidance` — IDiff-Face: plain conditional ε.
* :class:`NegativeGuidance` — NegFaceDiff: fixed w (paper/code: 0.5).
* :class:`LinearNegativeGuidance` — AdaptDiff: w_t = w_max·(1 − t/T) (code flag ``is_adaptive_w``;
  w_max = 1), ≈ 0 at the noisy start and w_max at the end; ``reverse=True`` is the ablation w_max·t/T.

:func:`guided_eps` evaluates the positive and negative branches in **one** UNet call on a batch of
2B rows (the reference makes two calls of B); when the weight of a step is 0 it makes a single call,
as NegFaceDiff's sampler does for w = 0 (it falls back to the original IDiff-Face sampler).
"""

from __future__ import annotations

from typing import Callable

import torch

#: ε model as the samplers call it: (x [B,…], t [B] long, context features for those B rows) -> ε
EpsFn = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]


class Guidance:
    """No guidance: ε(x_t, t, p⁺)."""

    name = "none"
    needs_negative = False

    def weight(self, t: int, T: int) -> float:
        """Negative-context weight at integer timestep ``t`` of a ``T``-step diffusion."""
        return 0.0

    @staticmethod
    def combine(eps_pos: torch.Tensor, eps_neg: torch.Tensor, w: float) -> torch.Tensor:
        # the reference's order of operations
        return (1 + w) * eps_pos - w * eps_neg

    def describe(self) -> dict[str, object]:
        return {"guidance": self.name}


NoGuidance = Guidance


class NegativeGuidance(Guidance):
    """NegFaceDiff: fixed negative weight ``w``."""

    name = "negative"

    def __init__(self, w: float = 0.5):
        self.w = float(w)
        self.needs_negative = self.w != 0

    def weight(self, t: int, T: int) -> float:
        return self.w

    def describe(self) -> dict[str, object]:
        return {"guidance": self.name, "w": self.w}


class LinearNegativeGuidance(Guidance):
    """AdaptDiff: w(t) = w_max·(1 − t/T), or w_max·t/T with ``reverse``."""

    name = "linear"

    def __init__(self, w_max: float = 1.0, reverse: bool = False):
        self.w_max = float(w_max)
        self.reverse = bool(reverse)
        self.needs_negative = self.w_max != 0

    def weight(self, t: int, T: int) -> float:
        return self.w_max * (t / T) if self.reverse else self.w_max * (1 - t / T)

    def describe(self) -> dict[str, object]:
        return {"guidance": self.name, "w_max": self.w_max, "reverse": self.reverse}


def make_guidance(kind: str, w: float, reverse: bool = False) -> Guidance:
    """``none`` | ``negative`` (fixed w) | ``linear`` (w_t = w·(1 − t/T))."""
    if kind == "none":
        return NoGuidance()
    if kind == "negative":
        return NegativeGuidance(w)
    if kind == "linear":
        return LinearNegativeGuidance(w, reverse=reverse)
    raise ValueError(f"unknown guidance {kind!r} (none, negative, linear)")


def guided_eps(eps_fn: EpsFn, x: torch.Tensor, t_vec: torch.Tensor, t: int, T: int, guidance: Guidance,
               pos_ctx: object, both_ctx: object | None = None) -> torch.Tensor:
    """ε for one step; ``both_ctx`` holds the 2B rows [positive; negative] for the batched call."""
    w = guidance.weight(t, T)
    if not guidance.needs_negative or w == 0:
        return eps_fn(x, t_vec, pos_ctx)
    if both_ctx is None:
        raise ValueError(f"{guidance.name} guidance needs a negative context")
    t2 = t_vec if t_vec.numel() == 1 else torch.cat([t_vec, t_vec])  # [1] broadcasts over all rows
    eps = eps_fn(torch.cat([x, x]), t2, both_ctx)
    eps_pos, eps_neg = eps.chunk(2)
    return guidance.combine(eps_pos, eps_neg, w)
