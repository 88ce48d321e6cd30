"""UIFace's two-stage sampler: empty context first, identity context (with CFG) after a per-sample switch.

Facts from reference/generators.md §5.3 (Tencent/TFace ``generation/uiface/diffusion/ddpm.py::
sample_ddim_2stage``, ``configs/sample_ddim_config.yaml``); the maths is written afresh here.

Each DDIM step runs an empty-context pass (ε_∅) and, when some row uses its identity, an
identity-context pass (ε_c) on the whole batch; every row then takes its own ε:

* **stage 1** (``t ≥ switch_t``, the code's ``step_th`` = 500): rows that have not switched take ε_∅.
  With the adaptive switch, the empty pass also yields each row's cross-attention map (averaged over
  layers, min-max normalised, :func:`~fr_bench.generators.attention.cross_attention_map`); from the
  second step on, a row whose map changed by less than ``threshold`` since the previous step
  (mean |Δ| < th, strict) switches, and uses its identity **from the next step on** (the decision
  comes after the step's passes, as in the code). Its switch time t0 is the first timestep it
  uses its identity.
* **stage 2** (``t < switch_t``): every row uses ε = (1 + w)·ε_c − w·ε_∅ (CFG, w = ``cfg_scale`` = 1).
* **attention injection** (variants ``attn``, ``2-stage-adaptive+attn``): the identity pass attends
  with the empty pass's self-attention weights (Eq. 6) and renormalised cross-attention logits
  (Eq. 7; :func:`~fr_bench.generators.attention.inject_cross_logits`).

Where the released code differs from the paper, a named setting reproduces it (defaults follow the
paper as DESIGN §5 describes it): ``cross_attention: released`` (the conditional map renormalised to
0.5·empty + 0.5·conditional statistics) and ``early_switch: released`` (rows that switch during stage 1
take the identity pass alone — no CFG, self-attention injection only — until stage 2 starts).

Variants (the paper's Table 2 ablation): ``baseline`` (identity context with CFG at every step,
t0 = T), ``2-stage-fixed`` (t0 = ``switch_t`` for every row), ``2-stage-adaptive``, ``attn``
(``baseline`` + injection), ``2-stage-adaptive+attn`` (UIFace).

Every UNet call covers the whole batch with a shape fixed by the step's stage, and a row's switch
depends on its own maps only, so an image never depends on the other rows of its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from .attention import (DEFAULT_PROCESSOR, AttentionStore, CrossMode, InjectSelfQK, RecordCross, RecordSelfQK,
                        RenormCross, map_change)
from .idiff_unet import ConditionalUNet, ContextCache
from .samplers import Scheduler

Variant = Literal["baseline", "2-stage-fixed", "2-stage-adaptive", "attn", "2-stage-adaptive+attn"]
#: variant → (two stages, adaptive switch, attention injection)
VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    "baseline": (False, False, False),
    "2-stage-fixed": (True, False, False),
    "2-stage-adaptive": (True, True, False),
    "attn": (False, False, True),
    "2-stage-adaptive+attn": (True, True, True),
}

#: (x [B,…], t [1], context features of those B rows) → ε in fp32
EpsCall = Callable[[torch.Tensor, torch.Tensor, ContextCache], torch.Tensor]


@dataclass(frozen=True)
class TwoStageSettings:
    variant: str = "2-stage-adaptive+attn"
    threshold: float = 0.006  # MSE_th (code 0.006; the paper is quoted with 0.005)
    switch_t: int = 500  # step_th: stage 1 while t ≥ switch_t
    w: float = 1.0  # cfg_scale
    cross_attention: CrossMode = "paper"
    cross_blend: float = 0.5  # weight of the empty pass's statistics (released mode)
    early_switch: Literal["stage2", "released"] = "stage2"
    map_size: int = 32  # switch maps are resized to this side (the code: 32, the latent side)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown UIFace variant {self.variant!r} ({', '.join(VARIANTS)})")

    @property
    def two_stage(self) -> bool:
        return VARIANTS[self.variant][0]

    @property
    def adaptive(self) -> bool:
        return VARIANTS[self.variant][1]

    @property
    def injection(self) -> bool:
        return VARIANTS[self.variant][2]


def update_switch(prev_map: torch.Tensor, cur_map: torch.Tensor, switched: torch.Tensor, threshold: float) -> torch.Tensor:
    """Rows already switched stay so; others switch when their map changed by less than ``threshold``."""
    return switched | (map_change(prev_map, cur_map) < threshold)


def cfg(eps_cond: torch.Tensor, eps_empty: torch.Tensor, w: float) -> torch.Tensor:
    """(1 + w)·ε_c − w·ε_∅, in the reference's order of operations."""
    return (1 + w) * eps_cond - w * eps_empty


class TwoStageSampler:
    """Runs the two-stage loop on a :class:`ConditionalUNet`, swapping its attention processors per pass."""

    def __init__(self, unet: ConditionalUNet, scheduler: Scheduler, settings: TwoStageSettings):
        self.unet = unet
        self.scheduler = scheduler
        self.settings = settings
        self.store = AttentionStore(map_size=settings.map_size)
        self._modules = unet.attention_modules()
        self._sets: dict[tuple, dict] = {}

    # ------------------------------------------------------------------------------ processors
    def _processors(self, *, record_self: bool = False, maps: bool = False, keep: str = "none",
                    inject_self: bool = False, cross: CrossMode | None = None) -> dict:
        key = (record_self, maps, keep, inject_self, cross)
        if key not in self._sets:
            procs = {}
            for name in self._modules:
                proc = DEFAULT_PROCESSOR
                if name.endswith("self_attention"):
                    if record_self:
                        proc = RecordSelfQK(self.store, name)
                    elif inject_self:
                        proc = InjectSelfQK(self.store, name)
                elif name.endswith("cross_attention"):
                    if maps or keep != "none":
                        proc = RecordCross(self.store, name, maps=maps, keep=keep)  # type: ignore[arg-type]
                    elif cross is not None:
                        proc = RenormCross(self.store, name, mode=cross, blend=self.settings.cross_blend)
                procs[name] = proc
            self._sets[key] = procs
        return self._sets[key]

    def _install(self, procs: dict) -> None:
        for name, m in self._modules.items():
            m.processor = procs[name]

    def _reset(self) -> None:
        for m in self._modules.values():
            m.processor = DEFAULT_PROCESSOR
        self.store.clear()

    # ---------------------------------------------------------------------------------- loop
    def run(self, x: torch.Tensor, t_tensors: list[torch.Tensor], empty: ContextCache, ident: ContextCache,
            eps_call: EpsCall) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoise ``x`` (fp32) over the scheduler's timesteps; returns x_0 and each row's t0 (−1: never)."""
        s = self.settings
        n = len(x)
        switched = torch.zeros(n, dtype=torch.bool, device=x.device)
        t0 = torch.full((n,), -1, dtype=torch.long, device=x.device)
        prev_map: torch.Tensor | None = None
        both: ContextCache | None = None
        keep = "logits" if s.cross_attention == "paper" else "stats"
        try:
            for k, t in enumerate(self.scheduler.timesteps):
                stage2 = not s.two_stage or t < s.switch_t
                use_id = torch.ones_like(switched) if stage2 else switched.clone()
                any_id = stage2 or bool(use_id.any())
                guided = stage2 or s.early_switch == "stage2"  # CFG (and full injection) for identity rows
                maps = s.adaptive and not stage2
                inject = s.injection and any_id
                cross = s.cross_attention if inject and guided else None
                tt = t_tensors[k]
                if stage2 and not s.injection:  # nothing to hand over between the passes: one call on 2B rows
                    both = both if both is not None else empty.cat(ident)
                    eps_e, eps_c = eps_call(torch.cat([x, x]), tt, both).chunk(2)
                    eps = cfg(eps_c, eps_e, s.w)
                else:
                    self._install(self._processors(record_self=inject, maps=maps, keep=keep if cross else "none"))
                    eps = eps_call(x, tt, empty)
                    if any_id:
                        self._install(self._processors(inject_self=inject, cross=cross))
                        eps_c = eps_call(x, tt, ident)
                        eps_id = cfg(eps_c, eps, s.w) if guided else eps_c
                        eps = eps_id if stage2 else torch.where(use_id[:, None, None, None], eps_id, eps)
                    self._install(self._processors())
                t0 = torch.where(use_id & (t0 < 0), torch.full_like(t0, t), t0)
                if maps:
                    cur = self.store.switch_map()
                    if prev_map is not None:
                        switched = update_switch(prev_map, cur, switched, s.threshold)
                    prev_map = cur
                self.store.clear()
                x = self.scheduler.step(eps, k, x)
        finally:
            self._reset()
        return x, t0
