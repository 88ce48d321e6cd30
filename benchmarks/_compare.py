"""Side-by-side timing for the speed scripts: product and anchor interleaved, repeated, medians compared.

Every script times frbench's code path ("product") against a faithful re-creation of the reference
code path ("anchor") on the same work, alternating them so that load on the machine hits both alike,
``repeats`` times each (≥ 3), and reports min and median of each and the headline ratio
median(anchor) / median(product). A ratio is never computed against a constant.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def interleaved(candidates: dict[str, Callable[[], Any]], repeats: int = 3, warmup: bool = True) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Run each candidate ``repeats`` times in round-robin order (after one untimed warm-up round);
    returns ({name: {min, median, runs}}, {name: last result})."""
    if repeats < 3:
        raise SystemExit("--repeat must be at least 3: a ratio of single runs swings with the machine's load")
    results: dict[str, Any] = {}
    if warmup:
        for name, fn in candidates.items():
            results[name] = fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            t, results[name] = timed(fn)
            times[name].append(t)
    stats = {name: {"min_s": round(min(ts), 4), "median_s": round(statistics.median(ts), 4), "runs": len(ts)}
             for name, ts in times.items()}
    return stats, results


def ratio(stats: dict[str, dict[str, float]], slow: str, fast: str) -> float:
    """median(slow) / median(fast), the headline number."""
    return round(stats[slow]["median_s"] / max(stats[fast]["median_s"], 1e-12), 2)


def untrained_iresnet(arch: str) -> torch.nn.Module:
    """A seeded random arcface_torch iresnet: timing needs the real shapes, not trained weights."""
    from fr_bench.models.iresnet import iresnet

    torch.manual_seed(0)
    model = iresnet(arch)
    for m in model.modules():  # fan-in init keeps activations finite without training
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
    return model.eval()
