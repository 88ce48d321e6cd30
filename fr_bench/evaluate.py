"""The ``eval`` stage: score one FR model on benchmark files and assemble the result JSON."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .embed import Embedder
from .errors import ConfigError, InputError
from .io import sha256_file
from .protocols import FIVE_BENCHMARKS, Benchmark, get_benchmark
from .protocols.base import ProgressFactory

#: names tried when the user does not list benchmarks
DEFAULT_BENCHMARKS = (*FIVE_BENCHMARKS, "cfp_ff", "vgg2_fp", "rfw", "ijbc", "ijbb")


@dataclass
class Selection:
    benchmarks: list[Benchmark]
    absent: list[str] = field(default_factory=list)


def select_benchmarks(data_dir: str | Path, names: list[str] | None, groups: dict[str, list[str]] | None = None) -> Selection:
    """Resolve benchmark names in ``data_dir``; without names, take every known one present and every
    declared group benchmark (``groups``: name → its ``.bin`` files, one per demographic group)."""
    from .protocols.fairness import make_group_benchmark

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(data_dir, "data directory not found")
    groups = groups or {}
    for gname, files in groups.items():
        if len(files) < 2:
            raise ConfigError(f"eval.groups.{gname}: a group benchmark needs at least 2 .bin files, got {len(files)}")

    def lookup(name: str) -> Benchmark | None:
        return make_group_benchmark(name, data_dir, groups[name]) if name in groups else get_benchmark(name, data_dir)

    if names:
        chosen = []
        for name in names:
            bench = lookup(name)
            if bench is None:
                raise InputError(data_dir, f"unknown benchmark '{name}' (no {name}.bin here and no protocol of that name)")
            missing = [p for p in bench.files() if not p.exists()]
            if missing:
                raise InputError(missing[0], f"file for benchmark '{name}' not found")
            chosen.append(bench)
        return Selection(chosen)
    sel = Selection([])
    for name in DEFAULT_BENCHMARKS:
        bench = lookup(name)
        if bench is not None and bench.present():
            sel.benchmarks.append(bench)
        elif name in FIVE_BENCHMARKS:
            sel.absent.append(name)
    for name in groups:  # declared groups always run: a missing pack is an error, not a silent skip
        if any(b.name == name for b in sel.benchmarks):
            continue
        bench = lookup(name)
        missing = [p for p in bench.files() if not p.exists()]
        if missing:
            raise InputError(missing[0], f"file for group benchmark '{name}' not found")
        sel.benchmarks.append(bench)
    if not sel.benchmarks:
        raise InputError(data_dir, f"no benchmark files found (looked for {', '.join(f'{n}.bin' for n in FIVE_BENCHMARKS)}, IJBC/, IJBB/)")
    return sel


def run_eval(
    embedder: Embedder,
    selection: Selection,
    *,
    flip: bool = True,
    batch_size: int | None = None,
    progress: ProgressFactory | None = None,
    workdir: Path | None = None,
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
    bootstrap: int | None = None,
    bootstrap_seed: int = 0,
) -> dict[str, Any]:
    """Evaluate every selected benchmark; returns the ``--output`` JSON document. ``bootstrap`` adds
    seeded 95% percentile intervals of each 10-fold mean (``accuracy_ci95``)."""
    from .metrics.bootstrap import add_fold_intervals

    results: dict[str, Any] = {}
    for bench in selection.benchmarks:
        t0 = time.perf_counter()
        res = bench.evaluate(embedder, flip=flip, batch_size=batch_size, progress=progress, workdir=workdir)
        if bootstrap:
            add_fold_intervals(res, bootstrap, bootstrap_seed)
        res["seconds"] = round(time.perf_counter() - t0, 3)
        results[bench.name] = res
        if on_result is not None:
            on_result(bench.name, res)
    five = [results[n]["accuracy"] for n in FIVE_BENCHMARKS if n in results]
    extra = {"bootstrap": {"replicates": bootstrap, "seed": bootstrap_seed, "unit": "the 10 test folds of each benchmark",
                           "interval": "95% percentile interval of the fold mean"}} if bootstrap else {}
    return {
        "model": str(embedder.path),
        "model_description": embedder.description,
        "flip": flip,
        "benchmarks": results,
        "average": sum(five) / len(five) if len(five) == len(FIVE_BENCHMARKS) else None,
        "average_of": [n for n in FIVE_BENCHMARKS if n in results],
        "absent": selection.absent,
        **extra,
        "frbench_version": __version__,
    }


def input_hashes(embedder: Embedder, selection: Selection) -> dict[str, str]:
    """sha256 of the model and of every benchmark file (logged as params)."""
    out = {"model_sha256": sha256_file(embedder.path)}
    for bench in selection.benchmarks:
        files = [p for p in bench.files() if p.is_file()]
        if len(files) == 1:
            out[f"{bench.name}_sha256"] = sha256_file(files[0])
        else:
            for p in files:
                out[f"{bench.name}_{p.name}_sha256"] = sha256_file(p)
    return out


def eval_params(model: str | Path, data_dir: str | Path, selection: Selection, embedder: Embedder, *, flip: bool,
                batch_size: int, dtype: str) -> dict[str, Any]:
    """The params an evaluation is logged with, the same from ``frbench eval`` and from the run's eval stage."""
    return {"model": str(model), "flip": flip, "batch_size": batch_size, "dtype": dtype,
            "benchmarks": [b.name for b in selection.benchmarks], "data_dir": str(data_dir),
            **input_hashes(embedder, selection)}


def tracking_metrics(selection: Selection, doc: dict[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for bench in selection.benchmarks:
        metrics.update(bench.headline(doc["benchmarks"][bench.name]))
    if doc.get("average") is not None:
        metrics["verification/avg"] = doc["average"]
    for name, res in doc["benchmarks"].items():  # interval bounds, for the leaderboard's ± column
        if isinstance(res.get("accuracy_ci95"), list):
            metrics[f"{name}/accuracy_ci95_lo"], metrics[f"{name}/accuracy_ci95_hi"] = res["accuracy_ci95"]
    return metrics
