"""The generator adapter protocol and its registry.

An adapter turns identity contexts (``B×512`` unit vectors, or reference images) and per-image seeds
into uint8 images. The image of (identity i, sample k) depends only on (run seed, i, k): the engine
derives one 63-bit seed per image with :func:`sample_seed`, and adapters draw every random number of
that image from a generator seeded with it, so batch size, shard and GPU count never change a pixel.

Third-party adapters register through the ``frbench.generators`` entry-point group
(``name = "package.module:AdapterClass"``).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import torch

ENTRY_POINT_GROUP = "frbench.generators"


class GeneratorAdapter(ABC):
    """One identity-conditioned face generator."""

    #: registry name, e.g. ``idiff-face``
    name: ClassVar[str]
    #: side of the square images ``generate`` returns
    native_resolution: ClassVar[int]
    #: whether outputs must go through face alignment before FR training
    needs_alignment: ClassVar[bool]
    #: whether ``generate`` needs ``negatives`` (one negative context per row); adapters may set it per instance
    needs_negatives: bool = False

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "GeneratorAdapter":
        """Build the adapter from its config section (unknown keys should raise ConfigError)."""
        return cls(**cfg)

    @abstractmethod
    def load(self, weights: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        """Load weights from a local path; a missing file raises InputError naming where it looked."""

    @abstractmethod
    def generate(self, identities: torch.Tensor, seeds: torch.Tensor, *, negatives: torch.Tensor | None = None) -> torch.Tensor:
        """``identities`` B×512 (or B×n×3×H×W reference images), ``seeds`` int64 [B] → uint8 [B,3,H,W]."""


_REGISTRY: dict[str, type[GeneratorAdapter]] = {}
_FROM_ENTRY_POINTS: dict[str, type[GeneratorAdapter]] = {}  # loaded lazily, kept apart from built-ins


def register_generator(name: str):
    """Class decorator: make an adapter available under ``name``."""

    def deco(cls: type[GeneratorAdapter]) -> type[GeneratorAdapter]:
        cls.name = name
        cls._registered_as = name  # lets _import_builtins re-register if the registry was replaced
        _REGISTRY[name] = cls
        return cls

    return deco


def _entry_point_adapters() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_generators() -> dict[str, str]:
    """name → where it comes from (``built-in`` or the entry point's value)."""
    _import_builtins()
    out = {name: "built-in" for name in _REGISTRY}
    for name, ep in _entry_point_adapters().items():
        out.setdefault(name, ep.value)
    return dict(sorted(out.items()))


def get_generator(name: str) -> type[GeneratorAdapter] | None:
    """The adapter class registered as ``name`` (built-in first, then entry points); None if unknown."""
    _import_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    ep = _entry_point_adapters().get(name)
    if ep is None:
        return None
    if name not in _FROM_ENTRY_POINTS:
        _FROM_ENTRY_POINTS[name] = ep.load()
    return _FROM_ENTRY_POINTS[name]


def _import_builtins() -> None:
    """Import the built-in adapter modules so their decorators run (listed in BUILTIN_MODULES)."""
    import importlib

    for mod in BUILTIN_MODULES:
        module = importlib.import_module(f"{__package__}.{mod}")
        # an already-imported module does not run its decorators again: re-add what it registered
        for obj in vars(module).values():
            if isinstance(obj, type) and "_registered_as" in obj.__dict__:
                _REGISTRY.setdefault(obj._registered_as, obj)


#: modules under fr_bench.generators that define built-in adapters
BUILTIN_MODULES: list[str] = ["idiff_face", "arc2face", "fused_attention", "uiface"]


def sample_seed(run_seed: int, identity: int, sample: int) -> int:
    """The seed of image (identity, sample): a pure 63-bit hash, independent of batching and sharding."""
    digest = hashlib.blake2b(f"{run_seed}:{identity}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seeded_noise(seeds: torch.Tensor, shape: tuple[int, ...], device: str | torch.device, dtype: torch.dtype = torch.float32, stream: int = 0) -> torch.Tensor:
    """Standard normal noise ``[B, *shape]``, row b drawn only from ``seeds[b]`` (and ``stream``).

    ``stream`` separates independent draws of the same image (initial latent = 0, step t noise = t+1 …).
    """
    out = torch.empty((len(seeds), *shape), device=device, dtype=torch.float32)
    for b, s in enumerate(seeds.tolist()):
        g = torch.Generator(device=device)
        g.manual_seed((int(s) + 0x9E3779B97F4A7C15 * stream) & ((1 << 63) - 1))
        out[b] = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
    return out.to(dtype)
