"""95% confidence intervals by resampling identities (metrics) or test folds (the 10-fold benchmarks).

Identity bootstrap (Bolle et al.'s "subsets bootstrap"): a replicate draws n identities with
replacement; identity i drawn w_i times counts each of its genuine scores w_i times and each impostor
score between identities i ≠ j w_i·w_j times. Pairs between two draws of the same identity are never
impostors. Every statistic is then a weighted one over the original scores, so no replicate copies
embeddings or recomputes scores. The interval is the 2.5/97.5 percentile of the replicates, seeded.

The replicate statistics follow one simple rule set (accept s >= t, thresholds = the unique pooled
scores; EER where |FMR − FNMR| is smallest, their mean; FMRxx = lowest FNMR with FMR <= target),
which with unit weights agrees with frbench's exact ``strict`` numbers; the point estimates in the
JSON stay the exact ones. For very large sets the impostor side of the bootstrap uses a uniform
sample of impostor pairs (``max_impostors``), said in the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np

LEVEL = 0.95
TARGETS = {"fmr100": 0.01, "fmr1000": 0.001}


def interval(samples: np.ndarray, level: float = LEVEL) -> list[float]:
    """Percentile interval of bootstrap replicates (NaN replicates ignored)."""
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    if not len(s):
        return [float("nan"), float("nan")]
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(s, [a, 1.0 - a])
    return [float(lo), float(hi)]


def identity_draws(n: int, replicates: int, seed: int) -> Iterator[np.ndarray]:
    """Per replicate, how often each of ``n`` identities is drawn (n draws with replacement)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    for _ in range(replicates):
        yield np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)


def fold_interval(fold_values: list[float], replicates: int, seed: int) -> list[float]:
    """Interval of the mean over folds, folds resampled with replacement."""
    v = np.asarray(fold_values, np.float64)
    rng = np.random.Generator(np.random.PCG64(seed))
    means = v[rng.integers(0, len(v), (replicates, len(v)))].mean(axis=1)
    return interval(means)


def add_fold_intervals(result: dict[str, Any], replicates: int, seed: int) -> None:
    """``accuracy_ci95`` beside every 10-fold accuracy in a benchmark result (also inside group benchmarks)."""
    if isinstance(result.get("fold_accuracies"), list):
        result["accuracy_ci95"] = fold_interval(result["fold_accuracies"], replicates, seed)
    for sub in (result.get("groups") or {}).values():
        if isinstance(sub, dict):
            add_fold_intervals(sub, replicates, seed)


# ------------------------------------------------------------------------------- separability
@dataclass
class ScoreSet:
    """Genuine scores with their identity; impostor scores with their two identities."""

    genuine: np.ndarray
    genuine_id: np.ndarray
    impostor: np.ndarray
    impostor_a: np.ndarray
    impostor_b: np.ndarray
    n_identities: int
    impostor_sampled: bool = False
    impostor_total: int = 0

    def __post_init__(self) -> None:
        scores = np.concatenate([self.genuine, self.impostor]).astype(np.float64)
        order = np.argsort(-scores, kind="stable")
        self._sorted = scores[order]
        self._is_gen = order < len(self.genuine)
        self._a = np.concatenate([self.genuine_id, self.impostor_a]).astype(np.int64)[order]
        self._b = np.concatenate([self.genuine_id, self.impostor_b]).astype(np.int64)[order]
        # last index of each run of equal scores: thresholds are the unique pooled scores
        self._ends = np.flatnonzero(np.append(self._sorted[1:] != self._sorted[:-1], True))
        self._g64 = np.asarray(self.genuine, np.float64)
        self._i64 = np.asarray(self.impostor, np.float64)

    def stats(self, w: Optional[np.ndarray] = None) -> dict[str, float]:
        """Weighted statistics for identity multiplicities ``w`` (None: every identity once)."""
        w = np.ones(self.n_identities) if w is None else np.asarray(w, np.float64)
        pw = np.where(self._is_gen, w[self._a], w[self._a] * w[self._b])
        gw_sorted = np.where(self._is_gen, pw, 0.0)
        iw_sorted = pw - gw_sorted
        wg, wi = gw_sorted.sum(), iw_sorted.sum()
        out: dict[str, float] = {}
        gw = w[self.genuine_id]
        iw = w[self.impostor_a] * w[self.impostor_b]
        for name, vals, ws, tot in (("genuine", self._g64, gw, wg), ("impostor", self._i64, iw, wi)):
            mean = float(np.dot(ws, vals) / tot) if tot > 0 else float("nan")
            var = float(np.dot(ws, (vals - mean) ** 2) / tot) if tot > 0 else float("nan")
            out[f"{name}_mean"], out[f"{name}_std"] = mean, var ** 0.5
        denom = out["genuine_std"] ** 2 + out["impostor_std"] ** 2
        out["fdr"] = (out["genuine_mean"] - out["impostor_mean"]) ** 2 / denom if denom > 0 else float("nan")
        if wg <= 0 or wi <= 0:
            return {**out, "eer": float("nan"), **{k: float("nan") for k in TARGETS}}
        # accept s >= t at each unique score t (descending): prepend "accept nothing"
        fmr = np.concatenate([[0.0], np.cumsum(iw_sorted)[self._ends] / wi])
        fnmr = np.concatenate([[1.0], 1.0 - np.cumsum(gw_sorted)[self._ends] / wg])
        k = int(np.argmin(np.abs(fmr - fnmr)))
        out["eer"] = float((fmr[k] + fnmr[k]) / 2.0)
        for name, target in TARGETS.items():
            ok = np.flatnonzero(fmr <= target)  # fmr is non-decreasing: the last index has the lowest FNMR
            out[name] = float(fnmr[ok[-1]])
        return out


def score_set(embeddings: np.ndarray, labels: np.ndarray, *, max_impostors: int = 5_000_000, seed: int = 0,
              chunk: int = 1 << 20) -> ScoreSet:
    """Every genuine cosine and every impostor cosine (or a uniform sample of ``max_impostors`` of them)."""
    from ..embed import l2_normalize

    e = l2_normalize(np.asarray(embeddings, np.float32)).astype(np.float32)
    _, ids = np.unique(np.asarray(labels), return_inverse=True)
    n_ids = int(ids.max()) + 1
    order = np.argsort(ids, kind="stable")
    e, ids = e[order], ids[order]
    starts = np.searchsorted(ids, np.arange(n_ids + 1))
    g, gid = [], []
    for i in range(n_ids):
        block = e[starts[i] : starts[i + 1]]
        iu = np.triu_indices(len(block), 1)
        g.append((block @ block.T)[iu])
        gid.append(np.full(len(iu[0]), i, np.int64))
    counts = np.diff(starts).astype(np.int64)
    total_imp = int((counts.sum() ** 2 - (counts ** 2).sum()) // 2)
    if total_imp <= max_impostors:
        sc, aa, bb = [], [], []
        for i in range(n_ids - 1):
            rows = e[starts[i] : starts[i + 1]]
            rest = e[starts[i + 1] :]
            s = rows @ rest.T
            sc.append(s.reshape(-1))
            aa.append(np.full(s.size, i, np.int64))
            bb.append(np.repeat(ids[starts[i + 1] :][None, :], len(rows), 0).reshape(-1))
        imp = np.concatenate(sc) if sc else np.zeros(0, np.float32)
        ia = np.concatenate(aa) if aa else np.zeros(0, np.int64)
        ib = np.concatenate(bb) if bb else np.zeros(0, np.int64)
        sampled = False
    else:
        rng = np.random.Generator(np.random.PCG64(seed))
        sc, aa, bb, have = [], [], [], 0
        while have < max_impostors:
            m = min(chunk, 2 * (max_impostors - have) + 16)
            x, y = rng.integers(0, len(e), m), rng.integers(0, len(e), m)
            keep = ids[x] != ids[y]
            x, y = x[keep][: max_impostors - have], y[keep][: max_impostors - have]
            sc.append(np.einsum("ij,ij->i", e[x], e[y]))
            aa.append(ids[x])
            bb.append(ids[y])
            have += len(x)
        imp, ia, ib = np.concatenate(sc), np.concatenate(aa), np.concatenate(bb)
        sampled = True
    return ScoreSet(np.concatenate(g) if g else np.zeros(0, np.float32), np.concatenate(gid) if gid else np.zeros(0, np.int64),
                    imp, ia, ib, n_ids, sampled, total_imp)


def bootstrap_scores(scores: ScoreSet, replicates: int, seed: int,
                     progress: Optional[Callable[[int], None]] = None) -> dict[str, list[float]]:
    """95% intervals of every :meth:`ScoreSet.stats` value over identity-bootstrap replicates."""
    reps: dict[str, list[float]] = {}
    for w in identity_draws(scores.n_identities, replicates, seed):
        for k, v in scores.stats(w).items():
            reps.setdefault(k, []).append(v)
        if progress:
            progress(1)
    return {k: interval(np.asarray(v)) for k, v in reps.items()}


def weighted_group_mean_interval(sums: np.ndarray, counts: np.ndarray, replicates: int, seed: int) -> list[float]:
    """Interval of a pooled mean (Σ sums / Σ counts) over identity-bootstrap replicates."""
    sums, counts = np.asarray(sums, np.float64), np.asarray(counts, np.float64)
    vals = [float(np.dot(w, sums) / np.dot(w, counts)) for w in identity_draws(len(sums), replicates, seed)]
    return interval(np.asarray(vals))
