"""Noise schedules and samplers (schedulers), kept apart from the models that predict ε.

Like diffusers' schedulers, a scheduler knows the timesteps to visit and how to turn (ε, x_t) into
the next x; it never calls a model. Loop positions ``k = 0 … len(timesteps)-1`` index the steps.

* :class:`DDPMScheduler` with ``steps == T`` is IDiff-Face's ancestral sampler exactly
  (``diffusion/ddpm.py::DenoisingDiffusionProbabilisticModel.sample``):
  x_{t-1} = 1/√α_t · (x_t − β_t/√(1−ᾱ_t) · ε) + σ_t·z with σ_t = √β_t ("fixed large"), z = 0 on the
  last two steps (t = 1, 0), no clipping, using the schedule constants stored in the checkpoint.
  With fewer steps it is the same update on a respaced schedule (a named setting, not the reference).
* :class:`DDIMScheduler` visits ``reversed(range(0, T, T // N))`` (the NegFaceDiff/UIFace spacing).
  ``variant="standard"`` is DDIM as published (ᾱ_prev = ᾱ_{t−skip}, 1 past the end: diffusers'
  ``DDIMScheduler`` with ``timestep_spacing="leading"``, ``set_alpha_to_one=True``, no clipping).
  ``variant="negfacediff"`` reproduces NegFaceDiff's ``sample_ddim`` (and UIFace's): its
  ``alphas_prev = [1, ᾱ_0, …, ᾱ_{T−2}]`` is indexed by prev_t, so it uses ᾱ_{prev_t − 1}
  (1.0 when prev_t ≤ 0) — one step off the published rule; images differ slightly from ``standard``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch

#: buffer names the reference DDPM wrapper registers (and its checkpoints carry), in its order
SCHEDULE_KEYS = (
    "betas",
    "alphas",
    "sigmas",
    "sqrt_alphas_inv",
    "alpha_bars",
    "sqrt_alpha_bars",
    "sqrt_one_minus_alpha_bars",
    "one_minus_alphas_over_sqrt_one_minus_alpha_bars",
)


@dataclass(frozen=True)
class NoiseSchedule:
    """The reference's precomputed constants (fp32 tensors of length T)."""

    betas: torch.Tensor
    alphas: torch.Tensor
    sigmas: torch.Tensor
    sqrt_alphas_inv: torch.Tensor
    alpha_bars: torch.Tensor
    sqrt_alpha_bars: torch.Tensor
    sqrt_one_minus_alpha_bars: torch.Tensor
    one_minus_alphas_over_sqrt_one_minus_alpha_bars: torch.Tensor

    @property
    def T(self) -> int:
        return len(self.betas)

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> "NoiseSchedule":
        """Constants derived as the reference does (ᾱ via exp(cumsum(log α)), all in fp32)."""
        betas = betas.float()
        alphas = 1 - betas
        alpha_bars = torch.cumsum(torch.log(alphas), dim=0).exp()
        sqrt_one_minus = (1 - alpha_bars).sqrt()
        return cls(betas=betas, alphas=alphas, sigmas=betas.sqrt(), sqrt_alphas_inv=1 / alphas.sqrt(),
                   alpha_bars=alpha_bars, sqrt_alpha_bars=alpha_bars.sqrt(), sqrt_one_minus_alpha_bars=sqrt_one_minus,
                   one_minus_alphas_over_sqrt_one_minus_alpha_bars=(1 - alphas) / sqrt_one_minus)

    @classmethod
    def linear(cls, T: int = 1000) -> "NoiseSchedule":
        """IDiff-Face's ``linear`` schedule: β from 1e-4 to 0.02 (scaled by 1000/T), fp32 linspace."""
        scale = 1000 / T
        return cls.from_betas(torch.linspace(scale * 0.0001, scale * 0.02, T, dtype=torch.float32))

    @classmethod
    def from_buffers(cls, buffers: dict[str, torch.Tensor]) -> "NoiseSchedule":
        """Use the constants saved with a checkpoint, as the reference's strict load does."""
        return cls(**{k: buffers[k].detach().float().cpu() for k in SCHEDULE_KEYS})

    def buffers(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in SCHEDULE_KEYS}


class Scheduler(ABC):
    """Visits ``timesteps`` (integers, descending); ``step`` maps (ε, k, x_t, z) to the next x."""

    timesteps: list[int]

    @abstractmethod
    def needs_noise(self, k: int) -> bool:
        """Whether step ``k`` adds fresh Gaussian noise (then ``step`` must get ``noise``)."""

    @abstractmethod
    def step(self, eps: torch.Tensor, k: int, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The sample after loop position ``k`` (x and ε in fp32)."""


class DDPMScheduler(Scheduler):
    """Ancestral DDPM with σ_t = √β_t; exactly the reference when ``steps`` is None or T."""

    def __init__(self, schedule: NoiseSchedule, steps: int | None = None):
        T = schedule.T
        steps = T if steps is None else int(steps)
        if not 1 <= steps <= T:
            raise ValueError(f"DDPM steps must be in 1..{T}, got {steps}")
        if steps == T:
            self.timesteps = list(range(T - 1, -1, -1))
            # Python floats of the fp32 buffers: multiplying an fp32 tensor by them gives the bits
            # the reference gets from its 0-dim fp32 buffers.
            self._inv = schedule.sqrt_alphas_inv.tolist()[::-1]
            self._coef = schedule.one_minus_alphas_over_sqrt_one_minus_alpha_bars.tolist()[::-1]
            self._sigma = schedule.sigmas.tolist()[::-1]
        else:
            # Respaced: keep ᾱ at evenly spread timesteps and rebuild β between them (IDDPM spacing).
            ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().unique()
            ab = schedule.alpha_bars.double()[ts]
            prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
            betas = 1 - ab / prev
            alphas = 1 - betas
            self.timesteps = ts.flip(0).tolist()
            self._inv = (1 / alphas.sqrt()).float().flip(0).tolist()
            self._coef = (betas / (1 - ab).sqrt()).float().flip(0).tolist()
            self._sigma = betas.sqrt().float().flip(0).tolist()
        self.T = T

    def needs_noise(self, k: int) -> bool:
        return k < len(self.timesteps) - 2  # the reference: z = 0 for i ≤ 1

    def step(self, eps: torch.Tensor, k: int, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        out = self._inv[k] * (x - eps * self._coef[k])
        if self.needs_noise(k):
            if noise is None:
                raise ValueError(f"DDPM step {k} needs noise")
            out = out + self._sigma[k] * noise
        return out


class DDIMScheduler(Scheduler):
    """DDIM (η configurable, no x0 clipping) on the ``range(0, T, T // steps)`` grid."""

    def __init__(self, schedule: NoiseSchedule, steps: int = 200, eta: float = 0.0,
                 variant: Literal["standard", "negfacediff"] = "standard"):
        T = schedule.T
        if not 1 <= steps <= T:
            raise ValueError(f"DDIM steps must be in 1..{T}, got {steps}")
        if variant not in ("standard", "negfacediff"):
            raise ValueError(f"unknown DDIM variant {variant!r}")
        skip = T // steps
        self.timesteps = list(reversed(range(0, T, skip)))
        self.eta = float(eta)
        self.variant = variant
        self.T = T
        ab = schedule.alpha_bars.float()
        one = torch.tensor(1.0)
        self._a_t: list[torch.Tensor] = []
        self._a_prev: list[torch.Tensor] = []
        for t in self.timesteps:
            prev = t - skip
            if variant == "standard":
                a_prev = ab[prev] if prev >= 0 else one
            else:  # alphas_prev[prev] with alphas_prev = [1, ᾱ_0, …]: ᾱ_{prev-1}, 1 for prev ≤ 0
                a_prev = ab[prev - 1] if prev >= 1 else one
            self._a_t.append(ab[t])
            self._a_prev.append(a_prev)

    def needs_noise(self, k: int) -> bool:
        return self.eta > 0

    def step(self, eps: torch.Tensor, k: int, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        # Same sequence of fp32 scalar operations as the reference (x0, σ, re-derived ε, direction).
        a_t, a_prev = self._a_t[k], self._a_prev[k]
        b_t, b_prev = 1 - a_t, 1 - a_prev
        x0 = (x - float(b_t ** 0.5) * eps) / float(a_t ** 0.5)
        std = self.eta * ((b_prev / b_t) * (1 - a_t / a_prev)) ** 0.5
        eps = (x - float(a_t ** 0.5) * x0) / float(b_t ** 0.5)
        out = float(a_prev ** 0.5) * x0 + float((1 - a_prev - std ** 2) ** 0.5) * eps
        if self.eta > 0:
            if noise is None:
                raise ValueError(f"DDIM step {k} needs noise (eta > 0)")
            out = out + float(std) * noise
        return out


def make_scheduler(schedule: NoiseSchedule, sampler: str, steps: int | None, eta: float = 0.0,
                   ddim_variant: Literal["standard", "negfacediff"] = "standard") -> Scheduler:
    """``ddpm`` (default T steps) or ``ddim`` (default 200 steps, NegFaceDiff's ``ddim_step``)."""
    if sampler == "ddpm":
        return DDPMScheduler(schedule, steps)
    if sampler == "ddim":
        return DDIMScheduler(schedule, 200 if steps is None else steps, eta=eta, variant=ddim_variant)
    raise ValueError(f"unknown sampler {sampler!r} (ddpm, ddim)")
