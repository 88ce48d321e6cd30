"""Demographic fairness: a set of ``.bin`` packs, one per group, scored together (RFW, BUPT-style splits).

Each group is the 10-fold ``.bin`` protocol of :mod:`.verification` on its own pack. Across groups:

* ``mean``: mean of the group accuracies;
* ``std``: their standard deviation with ``ddof=1`` on percentages — TFace's ``verification_rfw.py``
  (``np.std(accs, ddof=1)``), the number the RFW and FRCSyn tables quote; ``std_ddof0`` beside it;
* ``ser``: skewed error ratio, max group error / min group error (100 − accuracy);
* ``to``: FRCSyn's trade-off, mean − std (percentage points);
* per-group FNMR at **one global threshold** chosen on all groups' impostor pairs together at FMR 1%
  (FRCSyn's second view): the largest threshold on the squared distance that accepts at most 1% of
  the pooled impostor pairs (accept iff d < t, as the 10-fold protocol).

Accuracies are fractions in ``groups`` (like every other benchmark) and percentages in the
aggregate (``mean``, ``std``, ``to``), as the papers print them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data.binfile import load_pack
from ..embed import Embedder
from .base import Benchmark, ProgressFactory, register_benchmark
from .verification import pair_embeddings, verification_accuracy

#: RFW's four test packs as insightface/TFace distribute them
RFW_GROUPS = ("African", "Asian", "Caucasian", "Indian")
GLOBAL_FMR = 0.01


def group_summary(accuracies: dict[str, float]) -> dict[str, Any]:
    """mean, std (ddof=1, percentages), SER and TO of per-group accuracies given as fractions."""
    pct = np.array([100.0 * a for a in accuracies.values()], dtype=np.float64)
    err = 100.0 - pct
    std1 = float(np.std(pct, ddof=1)) if len(pct) > 1 else 0.0
    mean = float(np.mean(pct))
    return {"mean": mean, "std": std1, "std_ddof0": float(np.std(pct)),
            # a group without errors leaves SER undefined (null in the JSON, not Infinity)
            "ser": float(err.max() / err.min()) if err.min() > 0 else None,
            "to": mean - std1, "best_group": max(accuracies, key=accuracies.get), "worst_group": min(accuracies, key=accuracies.get)}


def global_threshold_fnmr(distances: dict[str, np.ndarray], issame: dict[str, np.ndarray], fmr: float = GLOBAL_FMR) -> dict[str, Any]:
    """One threshold for all groups at ``fmr`` of the pooled impostor pairs; each group's FNMR and FMR there."""
    impostor = np.sort(np.concatenate([distances[g][~issame[g]] for g in distances]))
    k = int(np.floor(fmr * len(impostor)))
    # accept iff d < t: with t = the (k+1)-th smallest impostor distance at most k impostors pass
    t = float(impostor[k]) if k < len(impostor) else float("inf")
    per: dict[str, dict[str, float]] = {}
    for g in distances:
        d, same = distances[g], issame[g]
        per[g] = {"fnmr": float(np.mean(d[same] >= t)) if same.any() else float("nan"),
                  "fmr": float(np.mean(d[~same] < t)) if (~same).any() else float("nan")}
    return {"target_fmr": fmr, "threshold": t, "fmr": float(np.mean(impostor < t)), "impostor_pairs": int(len(impostor)),
            "groups": per, "rule": "largest squared-distance threshold accepting <= target of the pooled impostor pairs (accept d < t)"}


class GroupVerification(Benchmark):
    """Several ``.bin`` packs scored as one group benchmark (``rfw``, or any ``eval.groups`` entry)."""

    def __init__(self, name: str, data_dir: str | Path, groups: dict[str, Path] | None = None):
        super().__init__(name, data_dir)
        self.groups = groups if groups is not None else rfw_groups(Path(data_dir))

    def files(self) -> list[Path]:
        return list(self.groups.values())

    def evaluate(self, embedder: Embedder, *, flip: bool = True, batch_size: int | None = None,
                 progress: ProgressFactory | None = None, workdir: Path | None = None) -> dict[str, Any]:
        groups: dict[str, Any] = {}
        dists: dict[str, np.ndarray] = {}
        same: dict[str, np.ndarray] = {}
        for group, path in self.groups.items():
            decode_cb = (lambda total, g=group: progress(f"{self.name}/{g}: decode", total)) if progress else None
            pack = load_pack(path, progress=decode_cb)
            embed_cb = progress(f"{self.name}/{group}: embed", len(pack.images)) if progress else None
            emb = pair_embeddings(embedder, pack.images, flip=flip, batch_size=batch_size, progress=embed_cb)
            res = verification_accuracy(emb, pack.issame)
            res["file"] = str(path)
            groups[group] = res
            n = res["pairs"]
            e = np.asarray(emb, np.float64)
            dists[group] = np.sum(np.square(e[0:2 * n:2] - e[1:2 * n:2]), axis=1)
            same[group] = np.asarray(pack.issame, bool)[:n]
        out = {"groups": groups, **group_summary({g: r["accuracy"] for g, r in groups.items()}),
               "global_threshold": global_threshold_fnmr(dists, same), "flip": flip,
               "std_rule": "np.std of the group accuracies in percent, ddof=1 (TFace verification_rfw.py)",
               "to_rule": "mean - std, percentage points (FRCSyn)"}
        return out

    def headline(self, result: dict[str, Any]) -> dict[str, float]:
        out = {f"{self.name}/{g}/accuracy": r["accuracy"] for g, r in result["groups"].items()}
        for k in ("mean", "std", "ser", "to"):
            if result[k] is not None and np.isfinite(result[k]):
                out[f"{self.name}/{k}"] = result[k]
        for g, r in result["global_threshold"]["groups"].items():
            if np.isfinite(r["fnmr"]):
                out[f"{self.name}/{g}/fnmr_at_global_fmr1"] = r["fnmr"]
        return out


def rfw_groups(data_dir: Path) -> dict[str, Path]:
    """RFW's four ``<Group>_test.bin`` in ``data_dir`` or in its ``RFW/`` / ``rfw/`` sub-folder."""
    for base in (data_dir, data_dir / "RFW", data_dir / "rfw"):
        if all((base / f"{g}_test.bin").is_file() for g in RFW_GROUPS):
            return {g: base / f"{g}_test.bin" for g in RFW_GROUPS}
    return {g: data_dir / f"{g}_test.bin" for g in RFW_GROUPS}


def make_group_benchmark(name: str, data_dir: str | Path, files: list[str | Path]) -> GroupVerification:
    """A user-declared group benchmark: group names are the files' stems (``_test`` dropped)."""
    data_dir = Path(data_dir)
    groups: dict[str, Path] = {}
    for f in files:
        p = Path(f)
        p = p if p.is_absolute() else data_dir / p
        groups[p.stem.removesuffix("_test")] = p
    return GroupVerification(name, data_dir, groups)


register_benchmark("rfw")(GroupVerification)
