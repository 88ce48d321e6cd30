"""Identity separability: exact all-pairs genuine/impostor statistics (NegFaceDiff/AdaptDiff Table 3).

Genuine scores are the cosines of every unordered same-identity pair, impostor scores those of
every cross-identity pair. 1,000 identities × 20 images give 190,000 genuine and 199,800,000
impostor scores; the impostors are never held in memory at once. They are produced in blocks of
a matrix product (on the GPU when there is one) and reduced to

1. a histogram over 2^20 *exact* bins — each bin is a run of consecutive float64 bit patterns,
   so every value falls in exactly one bin and bins are ordered like the values — plus running
   mean/variance (Chan's parallel update);
2. in a second pass, the exact values of the few bins around each operating point.

From the histogram, the sorted genuine scores and those few bins, EER, FMR100 and FMR1000 follow
exactly as pyeer 0.5.6 computes them (``pyeer.eer_stats``: thresholds = the unique pooled scores,
accept ``s >= t``, FMR-type points at the *nearest* FMR with the first occurrence, EER by
``get_eer_values``), and the strict variants (lowest FNMR with FMR <= target), without ever
sorting the impostors. ``tests/test_separability.py`` checks both against pyeer and a brute force.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch

#: FMR operating points reported (name → target FMR)
OPERATING_POINTS = {"fmr100": 0.01, "fmr1000": 0.001}
#: bins are the top 20 bits of an order-preserving int64 key of the float64 score
_SHIFT = 44
_NBINS = 1 << 20
_OFFSET = 1 << 19
_SIGN_FLIP = 0x7FFF_FFFF_FFFF_FFFF

RULES = {
    "pyeer": "FNMR at the threshold whose FMR is nearest the target (first, i.e. lowest, threshold on ties); "
             "EER as pyeer.eer_stats.get_eer_values; thresholds = unique pooled scores, accept s >= t",
    "strict": "lowest FNMR over thresholds whose FMR <= target",
}


# ------------------------------------------------------------------------------------- results
@dataclass
class SeparabilityResult:
    """Everything ``frbench metrics`` reports for separability (rates as fractions)."""

    eer: float
    fmr100: float
    fmr1000: float
    fmr100_strict: float
    fmr1000_strict: float
    genuine_mean: float
    genuine_std: float
    impostor_mean: float
    impostor_std: float
    fdr: Optional[float]
    d_prime: float
    genuine_pairs: int
    impostor_pairs: int
    eer_threshold: float
    fmr100_threshold: float
    fmr1000_threshold: float
    fmr100_strict_threshold: Optional[float]
    fmr1000_strict_threshold: Optional[float]
    impostor_sampling: Optional[dict[str, Any]] = None
    #: plotting histogram: shared edges, genuine and impostor counts (not in to_dict())
    histogram: Optional[dict[str, np.ndarray]] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("histogram")
        d["rules"] = RULES
        return d


# --------------------------------------------------------------------------------- exact bins
# CPU blocks are reduced with numpy (vectorised far better than torch's CPU integer ops), CUDA
# blocks with torch; both compute the same bins.
def _as_float64(x: "np.ndarray | torch.Tensor") -> "np.ndarray | torch.Tensor":
    """Flat float64 view or copy: numpy for CPU data, torch for CUDA data."""
    if isinstance(x, torch.Tensor) and x.device.type == "cpu":
        x = x.numpy()
    if isinstance(x, np.ndarray):
        return np.asarray(x, dtype=np.float64).reshape(-1)
    return x.reshape(-1).to(torch.float64)


def _clean(x: "np.ndarray | torch.Tensor") -> "np.ndarray | torch.Tensor":
    """Flat float64 copy with -0.0 turned into +0.0 (equal values must share a bin)."""
    return _as_float64(x) + 0.0


def _bins(x64: "np.ndarray | torch.Tensor") -> "np.ndarray | torch.Tensor":
    """Monotone bin index in [0, 2^20) of float64 values (x < y ⇒ bin(x) <= bin(y)).

    The top 20 bits of the IEEE pattern, with negative numbers' magnitude bits flipped so that the
    signed integer order equals the value order.
    """
    h = x64.view(np.int64 if isinstance(x64, np.ndarray) else torch.int64) >> _SHIFT
    h ^= (h >> 63) & (_OFFSET - 1)
    h += _OFFSET
    return h


def _bins_np(x64: np.ndarray) -> np.ndarray:
    return _bins(np.ascontiguousarray(x64, dtype=np.float64))


def _edge_values(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest float64 of each bin (the bin is exactly the values between them)."""
    b = np.asarray(b, np.int64)

    def value(key: np.ndarray) -> np.ndarray:
        return np.where(key < 0, key ^ _SIGN_FLIP, key).view(np.float64)

    lo = value((b - _OFFSET) << _SHIFT)
    hi = value(((b - _OFFSET + 1) << _SHIFT) - 1)
    # the bin just below zero ends at -0.0, which compares equal to +0.0 (the next bin's start)
    hi = np.where((hi == 0) & np.signbit(hi), -np.finfo(np.float64).smallest_subnormal, hi)
    return lo, hi


# float32 blocks (every CPU score block) skip the float64 bit patterns: the top 17 bits of a float32
# (sign, 8 exponent, 7+1 mantissa bits) fix its float64 bin whenever the float32 is normal, so the
# histogram is counted over 2^17 float32 keys and folded into the 2^20 float64 bins through a table.
# Values with a zero float32 exponent (±0 and subnormals) are binned exactly in float64.
_F32_SHIFT = 15
_F32_KEYS = 1 << 17


def _f32_keys(x32: np.ndarray) -> np.ndarray:
    """The top 17 bits of each float32 (sign, exponent, 8 mantissa bits) as a key in [0, 2^17): the
    table below gives each key its float64 bin, so the key itself need not be ordered."""
    return x32.view(np.uint32) >> _F32_SHIFT


def _f32_table() -> tuple[np.ndarray, np.ndarray]:
    """For each float32 key: the float64 bin of its values, and whether the key is exact (normal)."""
    bits = np.arange(_F32_KEYS, dtype=np.uint32) << _F32_SHIFT
    with np.errstate(invalid="ignore"):  # the table covers NaN bit patterns too (marked inexact below)
        values = bits.view(np.float32).astype(np.float64)
    exponent = (bits >> 23) & 0xFF
    exact = (exponent != 0) & (exponent != 0xFF)
    table = np.where(exact, _bins_np(np.where(exact, values, 0.0)), 0)
    return table.astype(np.int64), exact


_F32_TABLE: Optional[tuple[np.ndarray, np.ndarray]] = None


def _f32_histogram(x32: np.ndarray) -> np.ndarray:
    """The exact 2^20-bin float64 histogram of float32 values, counted over float32 keys."""
    global _F32_TABLE
    if _F32_TABLE is None:
        _F32_TABLE = _f32_table()
    table, exact = _F32_TABLE
    keys = _f32_keys(x32).view(np.int32)  # < 2^17: fits; torch counts int32 keys without numpy's cast to intp
    counts = torch.bincount(torch.from_numpy(keys), minlength=_F32_KEYS).numpy()
    hist = np.bincount(table[exact], weights=counts[exact], minlength=_NBINS).astype(np.int64)
    if counts[~exact].any():  # zeros, subnormals (or inf): bin those few values exactly
        odd = x32[((x32.view(np.int32) & 0x7F800000) == 0) | ~np.isfinite(x32)]
        hist += np.bincount(_bins_np(odd.astype(np.float64) + 0.0), minlength=_NBINS)
    return hist


class _ImpostorPass:
    """Streaming reduction of impostor blocks: exact-bin histogram, count, min, mean and M2."""

    def __init__(self) -> None:
        self.hist: Any = None  # numpy or torch, following the first block
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf

    def add(self, values: "np.ndarray | torch.Tensor") -> None:
        if isinstance(values, torch.Tensor) and values.device.type == "cpu" and values.dtype == torch.float32:
            return self._add_f32(np.ascontiguousarray(values.numpy()).reshape(-1))
        x = _clean(values)
        nb = int(x.size if isinstance(x, np.ndarray) else x.numel())
        if nb == 0:
            return
        mb = float(x.mean())
        if math.isnan(mb):  # any NaN propagates into the mean
            raise ValueError("scores contain NaN")
        self.min = min(self.min, float(x.min()))
        if isinstance(x, np.ndarray):
            if self.hist is None:
                self.hist = np.zeros(_NBINS, np.int64)
            self.hist += np.bincount(_bins(x), minlength=_NBINS)
            d = x - mb
            m2b = float(d @ d)
        else:
            if self.hist is None:
                self.hist = torch.zeros(_NBINS, dtype=torch.int64, device=x.device)
            self.hist += torch.bincount(_bins(x), minlength=_NBINS)
            m2b = float(((x - mb) ** 2).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    def _add_f32(self, x32: np.ndarray) -> None:
        """The same statistics from a float32 block without float64 bit work (see :func:`_f32_histogram`)."""
        nb = int(x32.size)
        if nb == 0:
            return
        mb = float(np.add.reduce(x32, dtype=np.float64)) / nb  # float64 accumulation, no float64 copy
        if math.isnan(mb):
            raise ValueError("scores contain NaN")
        self.min = min(self.min, float(x32.min()) + 0.0)
        if self.hist is None:
            self.hist = np.zeros(_NBINS, np.int64)
        self.hist += _f32_histogram(x32)
        # Σx² − n·mean² in float64 (products of float32 are exact there): no cancellation at |mean| ≪ std
        m2b = max(float(np.einsum("i,i->", x32, x32, dtype=np.float64)) - nb * mb * mb, 0.0)
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    def histogram(self) -> np.ndarray:
        if self.hist is None:
            return np.zeros(_NBINS, np.int64)
        return self.hist if isinstance(self.hist, np.ndarray) else self.hist.cpu().numpy()


def _fetch(blocks: Iterable["np.ndarray | torch.Tensor"], ranges: list[tuple[int, int]]) -> np.ndarray:
    """Exact impostor values inside the given bin ranges (the second pass)."""
    if not ranges:
        return np.zeros(0, np.float64)
    bounds = [(float(_edge_values(np.array([a]))[0][0]), float(_edge_values(np.array([z]))[1][0])) for a, z in ranges]
    # the same bounds for float32 blocks: the float32 values inside [lo, hi] are those inside [lo32, hi32]
    bounds32 = [(_f32_ceil(lo), _f32_floor(hi)) for lo, hi in bounds]
    parts = []
    for block in blocks:
        if isinstance(block, torch.Tensor) and block.device.type == "cpu" and block.dtype == torch.float32:
            x32 = block.numpy().reshape(-1)
            mask = None
            for lo, hi in bounds32:
                m = (x32 >= lo) & (x32 <= hi)
                mask = m if mask is None else (mask | m)
            parts.append(x32[mask].astype(np.float64) + 0.0)
            continue
        x = _as_float64(block)  # -0.0 == +0.0 in comparisons; cleaned after selection
        mask = None
        for lo, hi in bounds:
            m = (x >= lo) & (x <= hi)
            mask = m if mask is None else (mask | m)
        sel = x[mask] + 0.0
        parts.append(sel if isinstance(sel, np.ndarray) else sel.cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros(0, np.float64)


def _f32_ceil(v: float) -> np.float32:
    """Smallest float32 ≥ v (v a float64)."""
    f = np.float32(v)
    return np.nextafter(f, np.float32(np.inf)) if float(f) < v else f


def _f32_floor(v: float) -> np.float32:
    """Largest float32 ≤ v."""
    f = np.float32(v)
    return np.nextafter(f, np.float32(-np.inf)) if float(f) > v else f


# ------------------------------------------------------------------------------ the ROC maths
@dataclass
class _Window:
    """All pooled thresholds whose bins lie in [lo, hi] with their exact FM and FNM counts."""

    thresholds: np.ndarray
    fm: np.ndarray  # float64 counts, as pyeer holds them
    fnm: np.ndarray
    imp_sorted: np.ndarray  # impostor values in the window, ascending
    above: int  # impostors in bins > hi


class _Curve:
    """pyeer's ROC over unique pooled scores, evaluated exactly from bins + a few fetched bins."""

    def __init__(self, genuine: np.ndarray, hist: np.ndarray):
        self.g = genuine  # sorted float64, cleaned
        self.gbins = _bins_np(genuine)
        self.ng = len(genuine)
        self.hist = hist
        self.ni = int(hist.sum())
        ge = np.zeros(_NBINS + 1, np.int64)
        ge[:_NBINS] = np.cumsum(hist[::-1])[::-1]
        self.ge = ge  # impostors in bins >= b
        self.nonempty = np.flatnonzero(hist)
        hg = np.bincount(self.gbins, minlength=_NBINS)
        self.g_le = np.cumsum(hg)  # genuines in bins <= b
        self.pooled = np.flatnonzero((hist + hg) > 0)
        self.values: np.ndarray | None = None
        self.value_bins: np.ndarray | None = None

    # -- which bins the second pass must fetch
    def _prev_nonempty(self, b: int) -> int | None:
        i = np.searchsorted(self.nonempty, b, "left") - 1
        return int(self.nonempty[i]) if i >= 0 else None

    def _next_nonempty(self, b: int) -> int | None:
        i = np.searchsorted(self.nonempty, b, "right")
        return int(self.nonempty[i]) if i < len(self.nonempty) else None

    def _window_bounds(self, ba: int, bz: int) -> tuple[int | None, int | None]:
        return self._prev_nonempty(ba), self._next_nonempty(bz)

    def _fmr_bin(self, op: float) -> int:
        """Last impostor bin whose largest attainable FMR is still >= op (float, as pyeer divides)."""
        fmr_top = self.ge[self.nonempty].astype(np.float64) / self.ni
        idx = np.flatnonzero(fmr_top - op >= 0)
        return int(self.nonempty[idx[-1]]) if len(idx) else int(self.nonempty[0])

    def _strict_k(self, op: float) -> int:
        """Largest FM count with FM / NI <= op in float64."""
        k = int(math.floor(op * self.ni))
        while k + 1 <= self.ni and (k + 1) / self.ni <= op:
            k += 1
        while k >= 0 and k / self.ni > op:
            k -= 1
        return k

    def _rank_bin(self, rank: int) -> int:
        """Bin holding the ``rank``-th largest impostor (1-based)."""
        ge_top = self.ge[self.nonempty]
        i = np.flatnonzero(ge_top >= rank)[-1]
        return int(self.nonempty[i])

    def _eer_bins(self) -> tuple[int, int]:
        lower = self.ge[1:].astype(np.float64) / self.ni - self.g_le.astype(np.float64) / self.ng
        b_lo = int(np.flatnonzero(lower <= 0)[0])
        i = np.searchsorted(self.pooled, b_lo, "right")
        b_hi = int(self.pooled[i]) if i < len(self.pooled) else b_lo
        return b_lo, b_hi

    def plan(self) -> dict[str, tuple[int | None, int | None]]:
        """Window (lo, hi) bins per quantity; None = open end."""
        plans: dict[str, tuple[int | None, int | None]] = {}
        for name, op in OPERATING_POINTS.items():
            b = self._fmr_bin(op)
            plans[name] = self._window_bounds(b, b)
            k = self._strict_k(op)
            if k < self.ni:
                b = self._rank_bin(k + 1)
                plans[name + "_strict"] = self._window_bounds(b, b)
        plans["eer"] = self._window_bounds(*self._eer_bins())
        return plans

    def wanted_ranges(self, plans: dict[str, tuple[int | None, int | None]]) -> list[tuple[int, int]]:
        """Bin spans the second pass must return exactly: each window, trimmed to its impostors."""
        spans = []
        for lo, hi in plans.values():
            a = 0 if lo is None else lo
            z = _NBINS - 1 if hi is None else hi
            sel = self.nonempty[(self.nonempty >= a) & (self.nonempty <= z)]
            if len(sel):
                spans.append((int(sel[0]), int(sel[-1])))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for a, z in spans:
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], z))
            else:
                merged.append((a, z))
        return merged

    def set_values(self, values: np.ndarray) -> None:
        order = np.argsort(values, kind="stable")
        self.values = values[order]
        self.value_bins = _bins_np(self.values)

    # -- exact local curves
    def window(self, lo: int | None, hi: int | None) -> _Window:
        assert self.values is not None and self.value_bins is not None
        a = 0 if lo is None else lo
        z = _NBINS - 1 if hi is None else hi
        i0, i1 = np.searchsorted(self.value_bins, [a, z + 1], "left")
        imp = self.values[i0:i1]
        g0, g1 = np.searchsorted(self.gbins, [a, z + 1], "left")
        thr = np.unique(np.concatenate([imp, self.g[g0:g1]]))
        above = int(self.ge[z + 1])
        fm = (above + len(imp) - np.searchsorted(imp, thr, "left")).astype(np.float64)
        fnm = np.searchsorted(self.g, thr, "left").astype(np.float64)
        return _Window(thr, fm, fnm, imp, above)

    def fmr_op(self, w: _Window, op: float) -> tuple[float, float]:
        """pyeer ``get_fmr_op``: FNMR at argmin |FMR − op| (first occurrence)."""
        fmr = w.fm / self.ni
        fnmr = w.fnm / self.ng
        i = int(np.argmin(abs(fmr - op)))
        return float(fnmr[i]), float(w.thresholds[i])

    def strict(self, w: Optional[_Window], op: float) -> tuple[float, Optional[float]]:
        """Lowest FNMR over pooled thresholds with FMR <= op, and that (lowest) threshold."""
        k = self._strict_k(op)
        if w is None or k >= self.ni:  # op >= 1: every threshold qualifies, the lowest rejects nothing
            return 0.0, None
        # the (k+1)-th largest impostor must be rejected: accept only s > v
        idx = len(w.imp_sorted) - (k + 1 - w.above)
        v = w.imp_sorted[idx]
        fnm = int(np.searchsorted(self.g, v, "right"))
        higher_i = w.imp_sorted[np.searchsorted(w.imp_sorted, v, "right"):]
        gi = np.searchsorted(self.g, v, "right")
        cands = [float(higher_i[0])] if len(higher_i) else []
        if gi < self.ng:
            cands.append(float(self.g[gi]))
        return fnm / self.ng, (min(cands) if cands else None)

    def eer(self, w: _Window, at_start: bool, lowest: float) -> tuple[float, float]:
        """pyeer ``get_eer_values`` on the window (``at_start``: the window begins at the lowest score)."""
        fmr = w.fm / self.ni
        fnmr = w.fnm / self.ng
        diff = fmr - fnmr
        hits = np.flatnonzero(diff <= 0)
        if len(hits) == 0:  # the curves never cross (e.g. the top score is shared): pyeer's fallback
            return 1.0, lowest
        t2 = int(hits[0])
        if t2 == 0 and not at_start:
            raise AssertionError("EER window does not reach the previous threshold")
        t1 = t2 - 1 if diff[t2] != 0 and t2 != 0 else t2
        if fmr[t1] + fnmr[t1] <= fmr[t2] + fnmr[t2]:
            return float((fnmr[t1] + fmr[t1]) / 2), float(w.thresholds[t1])
        return float((fnmr[t2] + fmr[t2]) / 2), float(w.thresholds[t2])


# ------------------------------------------------------------------------------- entry points
BlockSource = Callable[[], Iterator["np.ndarray | torch.Tensor"]]


def _finish(genuine: np.ndarray, acc: _ImpostorPass, second_pass: BlockSource,
            sampling: Optional[dict[str, Any]] = None, plot_bins: int = 200) -> SeparabilityResult:
    g = np.sort(genuine.astype(np.float64) + 0.0)
    if len(g) == 0:
        raise ValueError("no genuine pairs (every identity needs at least 2 images)")
    if acc.n == 0:
        raise ValueError("no impostor pairs (at least 2 identities are needed)")
    if np.isnan(g).any():
        raise ValueError("scores contain NaN")
    hist = acc.histogram()
    curve = _Curve(g, hist)
    plans = curve.plan()
    curve.set_values(_fetch(second_pass(), curve.wanted_ranges(plans)))

    out: dict[str, Any] = {}
    for name, op in OPERATING_POINTS.items():
        out[name], out[name + "_threshold"] = curve.fmr_op(curve.window(*plans[name]), op)
        w = curve.window(*plans[name + "_strict"]) if name + "_strict" in plans else None
        out[name + "_strict"], out[name + "_strict_threshold"] = curve.strict(w, op)
    lo, hi = plans["eer"]
    out["eer"], out["eer_threshold"] = curve.eer(curve.window(lo, hi), at_start=lo is None,
                                                  lowest=min(float(g[0]), acc.min))

    gmean, gstd = float(np.mean(g)), float(np.std(g))
    imean, istd = acc.mean, math.sqrt(max(acc.m2, 0.0) / acc.n)
    var = gstd ** 2 + istd ** 2
    fdr = (gmean - imean) ** 2 / var if var > 0 else None
    d_prime = 1.0 if gstd == 0 and istd == 0 else abs(gmean - imean) / math.sqrt(0.5 * var)  # pyeer's convention
    return SeparabilityResult(
        genuine_mean=gmean, genuine_std=gstd, impostor_mean=imean, impostor_std=istd, fdr=fdr, d_prime=d_prime,
        genuine_pairs=len(g), impostor_pairs=acc.n, impostor_sampling=sampling,
        histogram=_plot_histogram(g, hist, plot_bins), **out,
    )


def _plot_histogram(g: np.ndarray, hist: np.ndarray, nbins: int) -> dict[str, np.ndarray]:
    nz = np.flatnonzero(hist)
    edges_i = _edge_values(nz)[0]
    lo = min(float(g[0]), float(edges_i[0]), -1.0)
    hi = max(float(g[-1]), float(edges_i[-1]), 1.0)
    edges = np.linspace(lo, hi, nbins + 1)
    gh, _ = np.histogram(g, bins=edges)
    ih, _ = np.histogram(edges_i, bins=edges, weights=hist[nz])  # exact bins are far finer than these
    return {"edges": edges, "genuine": gh, "impostor": ih.astype(np.int64)}


def separability_from_scores(genuine: np.ndarray, impostor: np.ndarray, *, chunk: int = 1 << 24) -> SeparabilityResult:
    """Separability of given score sets (similarities; higher = more alike)."""
    genuine = np.asarray(genuine, dtype=np.float64).reshape(-1)
    impostor = np.asarray(impostor, dtype=np.float64).reshape(-1)

    def blocks() -> Iterator[np.ndarray]:
        for s in range(0, impostor.size, chunk):
            yield impostor[s : s + chunk]

    acc = _ImpostorPass()
    for b in blocks():
        acc.add(b)
    return _finish(genuine, acc, blocks)


# ------------------------------------------------------------------------ embeddings → scores
@dataclass
class _Layout:
    emb: torch.Tensor  # L2-normalised, rows grouped by identity, on device
    ends: torch.Tensor  # per row: index one past the last row of its identity (device, int64)
    starts: np.ndarray  # per identity run: first row
    n: int


def _layout(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, device: torch.device) -> _Layout:
    emb = torch.as_tensor(embeddings)
    lab = torch.as_tensor(labels).to(torch.int64).cpu().numpy()
    if emb.ndim != 2 or len(emb) != len(lab):
        raise ValueError("embeddings must be N×D with one label per row")
    if not bool(torch.isfinite(emb).all()):
        raise ValueError("embeddings contain NaN or inf")
    order = np.argsort(lab, kind="stable")
    lab = lab[order]
    e = emb[torch.from_numpy(order)].to(torch.float64)
    e = e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    run_ends = np.r_[starts[1:], len(lab)]
    ends = np.repeat(run_ends, run_ends - starts)
    return _Layout(e.to(torch.float32).to(device).contiguous(), torch.from_numpy(ends).to(device), starts, len(lab))


#: default score-block budget per device type (bytes of working memory per block)
DEFAULT_BLOCK_BYTES = {"cpu": 256 << 20, "cuda": 2 << 30}


def _rows_per_block(n: int, block_bytes: int) -> int:
    # per score: fp32 product, fp64 copy, 4-byte key and temporaries ≈ 24 bytes (CUDA blocks: int64 bins ≈ 48)
    return max(1, min(n, block_bytes // max(1, n * 24)))


def _exact_blocks(lay: _Layout, rows: int, genuine_out: Optional[list[torch.Tensor]] = None,
                  advance: Optional[Callable[[int], None]] = None) -> Iterator[torch.Tensor]:
    """Impostor score blocks of the upper triangle, row block by row block (genuine collected on the side)."""
    n, e, ends = lay.n, lay.emb, lay.ends
    dev = e.device
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        cmax = int(ends[r1 - 1])  # identity of the block's last row ends here; beyond: all impostors
        if cmax > r0:  # the near-diagonal columns r0..cmax-1 hold the genuine pairs
            sub = e[r0:r1] @ e[r0:cmax].T
            rr = torch.arange(r0, r1, device=dev)[:, None]
            cc = torch.arange(r0, cmax, device=dev)[None, :]
            end = ends[r0:r1, None]
            if genuine_out is not None:
                genuine_out.append(sub[(cc > rr) & (cc < end)].cpu())
            yield sub[cc >= end]
        if cmax < n:  # columns cmax..n-1: every pair an impostor; one contiguous product, no copy
            yield e[r0:r1] @ e[cmax:].T
        if advance is not None:
            advance(r1 - r0)


def _genuine_blocks(lay: _Layout) -> list[torch.Tensor]:
    """Same-identity scores, one identity at a time (the sampled path never forms the N×N product)."""
    out = []
    bounds = list(lay.starts) + [lay.n]
    for s, t in zip(bounds[:-1], bounds[1:]):
        if t - s > 1:
            block = lay.emb[s:t] @ lay.emb[s:t].T
            iu = torch.triu_indices(t - s, t - s, offset=1, device=block.device)
            out.append(block[iu[0], iu[1]].cpu())
    return out


def _sampled_pairs(labels: np.ndarray, count: int, seed: int, chunk: int = 1 << 20) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``count`` cross-identity image pairs drawn uniformly with replacement (deterministic in seed)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    left = count
    while left > 0:
        i = rng.integers(0, n, chunk)
        j = rng.integers(0, n, chunk)
        keep = labels[i] != labels[j]
        i, j = i[keep][:left], j[keep][:left]
        left -= len(i)
        yield i, j


def _sampled_blocks(lay: _Layout, labels_sorted: np.ndarray, count: int, seed: int) -> Iterator[torch.Tensor]:
    e = lay.emb
    for i, j in _sampled_pairs(labels_sorted, count, seed):
        ii = torch.from_numpy(i).to(e.device)
        jj = torch.from_numpy(j).to(e.device)
        yield (e[ii] * e[jj]).sum(dim=1)


class _NoTF32:
    """Full fp32 matmuls for the scores, whatever other code set globally."""

    def __enter__(self) -> None:
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")

    def __exit__(self, *exc: Any) -> None:
        torch.backends.cuda.matmul.allow_tf32 = self.saved[0]
        torch.set_float32_matmul_precision(self.saved[1])


def count_pairs(labels: np.ndarray) -> tuple[int, int]:
    """(genuine, impostor) unordered pair counts for per-image identity labels."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    n = int(counts.sum())
    gen = int((counts * (counts - 1) // 2).sum())
    return gen, n * (n - 1) // 2 - gen


def separability(
    embeddings: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    max_impostors: Optional[int] = None,
    seed: int = 0,
    block_bytes: Optional[int] = None,
    cache_bytes: int = 1 << 30,
    progress: Optional[Callable[[str, int], Callable[[int], None]]] = None,
) -> SeparabilityResult:
    """Exact separability of L2-normalised embeddings grouped by ``labels`` (functional form).

    Genuine pairs are always all same-identity pairs. Impostor pairs are all cross-identity pairs,
    or — when there are more than ``max_impostors`` — that many pairs drawn uniformly with
    replacement from them with ``seed`` (recorded in ``impostor_sampling``). Memory stays bounded by
    ``block_bytes`` of working memory per block (default 256 MiB on CPU, 2 GiB on CUDA); impostor
    blocks are kept for the second pass only when they total less than ``cache_bytes``, otherwise
    they are recomputed. ``progress(description, total)`` → ``advance(n)`` reports rows done per pass.
    """
    device = torch.device(device)
    block_bytes = block_bytes or DEFAULT_BLOCK_BYTES.get(device.type, 256 << 20)
    lay = _layout(embeddings, labels, device)
    labels_sorted = np.sort(torch.as_tensor(labels).to(torch.int64).cpu().numpy(), kind="stable")
    n_gen, n_imp = count_pairs(labels_sorted)
    sampling = None
    genuine_parts: list[torch.Tensor] = []
    with _NoTF32(), torch.no_grad():
        if max_impostors is not None and n_imp > max_impostors:
            sampling = {"max_impostors": int(max_impostors), "seed": int(seed), "population": n_imp,
                        "method": "uniform with replacement over cross-identity image pairs"}
            total = int(max_impostors)
            genuine_parts = _genuine_blocks(lay)

            def make() -> Iterator[torch.Tensor]:
                return _sampled_blocks(lay, labels_sorted, total, seed)
        else:
            total = n_imp
            rows = _rows_per_block(lay.n, block_bytes)
            first = True

            def make() -> Iterator[torch.Tensor]:
                nonlocal first
                out = genuine_parts if first else None
                advance = progress(f"all pairs, pass {1 if first else 2}", lay.n) if progress else None
                first = False
                return _exact_blocks(lay, rows, out, advance)

        acc = _ImpostorPass()
        cached: list[torch.Tensor] | None = [] if total * 4 <= cache_bytes else None
        # the reduction of block k (numpy, one thread) overlaps the product of block k+1 (torch); blocks
        # are reduced one at a time in order, so the result is the sequential one exactly
        with ThreadPoolExecutor(1, thread_name_prefix="frbench-separability") as reducer:
            pending = None
            for block in make():
                if pending is not None:
                    pending.result()
                pending = reducer.submit(acc.add, block)
                if cached is not None:  # blocks are fresh tensors of their own: kept as they are
                    cached.append(block.reshape(-1))
            if pending is not None:
                pending.result()
        second: BlockSource = (lambda: iter(cached)) if cached is not None else make
        genuine = torch.cat(genuine_parts).numpy() if genuine_parts else np.zeros(0)
        if len(genuine) != n_gen:  # pragma: no cover - layout invariant
            raise AssertionError(f"collected {len(genuine)} genuine scores, expected {n_gen}")
        return _finish(genuine, acc, second, sampling)


def pair_scores(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                *, device: str | torch.device = "cpu", block_bytes: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """All genuine and impostor scores, materialised (for tests and small sets; same arithmetic as
    :func:`separability`)."""
    device = torch.device(device)
    block_bytes = block_bytes or DEFAULT_BLOCK_BYTES.get(device.type, 256 << 20)
    lay = _layout(embeddings, labels, device)
    gen: list[torch.Tensor] = []
    with _NoTF32(), torch.no_grad():
        imp = [b.reshape(-1).cpu() for b in _exact_blocks(lay, _rows_per_block(lay.n, block_bytes), gen)]
    g = torch.cat(gen).to(torch.float64).numpy() if gen else np.zeros(0)
    i = torch.cat(imp).to(torch.float64).numpy() if imp else np.zeros(0)
    return g, i


class SeparabilityMetric:
    """torchmetrics-style state: ``update(embeddings, labels)`` per batch, ``compute()`` at the end.

    All-pairs scores need every embedding, so ``update`` only stores the (small) embeddings;
    ``compute`` runs :func:`separability` on them.
    """

    def __init__(self, *, device: str | torch.device = "cpu", max_impostors: Optional[int] = None, seed: int = 0,
                 block_bytes: Optional[int] = None, cache_bytes: int = 1 << 30):
        self.kwargs = dict(device=device, max_impostors=max_impostors, seed=seed, block_bytes=block_bytes,
                           cache_bytes=cache_bytes)
        self.reset()

    def reset(self) -> None:
        self._emb: list[torch.Tensor] = []
        self._lab: list[torch.Tensor] = []

    def update(self, embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> None:
        e = torch.as_tensor(embeddings).detach().to("cpu", torch.float32)
        lab = torch.as_tensor(labels).detach().to("cpu", torch.int64).reshape(-1)
        if e.ndim != 2 or len(e) != len(lab):
            raise ValueError("update() takes N×D embeddings and N labels")
        if self._emb and e.shape[1] != self._emb[0].shape[1]:
            raise ValueError(f"embedding width changed from {self._emb[0].shape[1]} to {e.shape[1]}")
        self._emb.append(e)
        self._lab.append(lab)

    def compute(self) -> SeparabilityResult:
        if not self._emb:
            raise ValueError("compute() before any update()")
        return separability(torch.cat(self._emb), torch.cat(self._lab), **self.kwargs)
