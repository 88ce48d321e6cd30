"""The ``eval`` stage: score one FR model on benchmark files and assemble the result JSON."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .embed import Embedder
from .errors import InputError
from .io import sha256_file
from .protocols import FIVE_BENCHMARKS, Benchmark, get_benchmark
from .protocols.base import ProgressFactory

#: names tried when the user does not list benchmarks
DEFAULT_BENCHMARKS = (*FIVE_BENCHMARKS, "cfp_ff", "vgg2_fp", "ijbc", "ijbb")


@dataclass
class Selection:
    benchmarks: list[Benchmark]
    absent: list[str] = field(default_factory=list)


def select_benchmarks(data_dir: str | Path, names: list[str] | None) -> Selection:
    """Resolve benchmark names in ``data_dir``; without names, take every known one present."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(data_dir, "data directory not found")
    if names:
        chosen = []
        for name in names:
            bench = get_benchmark(name, data_dir)
            if bench is None:
                raise InputError(data_dir, f"unknown benchmark '{name}' (no {name}.bin here and no protocol of that name)")
            missing = [p for p in bench.files() if not p.exists()]
            if missing:
                raise InputError(missing[0], f"file for benchmark '{name}' not found")
            chosen.append(bench)
        return Selection(chosen)
    sel = Selection([])
    for name in DEFAULT_BENCHMARKS:
        bench = get_benchmark(name, data_dir)
        if bench is not None and bench.present():
            sel.benchmarks.append(bench)
        elif name in FIVE_BENCHMARKS:
            sel.absent.append(name)
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
) -> dict[str, Any]:
    """Evaluate every selected benchmark; returns the ``--output`` JSON document."""
    results: dict[str, Any] = {}
    for bench in selection.benchmarks:
        t0 = time.perf_counter()
        res = bench.evaluate(embedder, flip=flip, batch_size=batch_size, progress=progress, workdir=workdir)
        res["seconds"] = round(time.perf_counter() - t0, 3)
        results[bench.name] = res
        if on_result is not None:
            on_result(bench.name, res)
    five = [results[n]["accuracy"] for n in FIVE_BENCHMARKS if n in results]
    return {
        "model": str(embedder.path),
        "model_description": embedder.description,
        "flip": flip,
        "benchmarks": results,
        "average": sum(five) / len(five) if len(five) == len(FIVE_BENCHMARKS) else None,
        "average_of": [n for n in FIVE_BENCHMARKS if n in results],
        "absent": selection.absent,
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


def tracking_metrics(selection: Selection, doc: dict[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for bench in selection.benchmarks:
        metrics.update(bench.headline(doc["benchmarks"][bench.name]))
    if doc.get("average") is not None:
        metrics["verification/avg"] = doc["average"]
    return metrics
