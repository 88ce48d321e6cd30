"""Benchmark registry: a name maps to a protocol that knows its files and how to score a model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

from ..embed import Embedder

#: the five verification sets behind the papers' "Avg" column
FIVE_BENCHMARKS = ("lfw", "cfp_fp", "cplfw", "agedb_30", "calfw")

ProgressFactory = Callable[[str, int], Callable[[int], None]]


class Benchmark(ABC):
    """One evaluation protocol bound to its data in ``data_dir``."""

    name: str

    def __init__(self, name: str, data_dir: str | Path):
        self.name = name
        self.data_dir = Path(data_dir)

    @abstractmethod
    def files(self) -> list[Path]:
        """The files this benchmark reads (used to check presence and to hash inputs)."""

    def present(self) -> bool:
        return all(p.exists() for p in self.files())

    @abstractmethod
    def evaluate(
        self,
        embedder: Embedder,
        *,
        flip: bool = True,
        batch_size: int | None = None,
        progress: ProgressFactory | None = None,
        workdir: Path | None = None,
    ) -> dict[str, Any]:
        """Score ``embedder``; returns the JSON-ready result block for this benchmark.

        ``workdir`` is where the benchmark may keep caches and write plots (a result's
        ``"artifacts"`` list names files the caller logs to MLflow).
        """

    def headline(self, result: dict[str, Any]) -> dict[str, float]:
        """Flat ``name/metric`` values for tracking."""
        return {f"{self.name}/{k}": v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


_REGISTRY: dict[str, Callable[[str, Path], Benchmark]] = {}
_FALLBACKS: list[Callable[[str, Path], Benchmark | None]] = []


def register_benchmark(*names: str) -> Callable[[type[Benchmark]], type[Benchmark]]:
    """Class decorator registering a benchmark under one or more names."""

    def deco(cls: type[Benchmark]) -> type[Benchmark]:
        for n in names:
            _REGISTRY[n] = cls  # type: ignore[assignment]
        return cls

    return deco


def register_fallback(factory: Callable[[str, Path], Benchmark | None]) -> None:
    """A factory consulted for unregistered names (e.g. any ``<name>.bin`` file)."""
    _FALLBACKS.append(factory)


def available_benchmarks() -> list[str]:
    return sorted(_REGISTRY)


def get_benchmark(name: str, data_dir: str | Path) -> Benchmark | None:
    """The benchmark called ``name`` reading from ``data_dir``; None if the name is unknown."""
    data_dir = Path(data_dir)
    if name in _REGISTRY:
        return _REGISTRY[name](name, data_dir)
    for factory in _FALLBACKS:
        bench = factory(name, data_dir)
        if bench is not None:
            return bench
    return None
