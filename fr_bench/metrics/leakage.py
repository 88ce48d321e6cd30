"""Identity leakage: do synthetic identities reproduce identities of the generator's training set?

For every synthetic identity (the L2-normalised mean of its images' normalised embeddings) the nearest
training identity (same class-mean construction) and their cosine. A synthetic identity is *flagged*
when that cosine is above a threshold calibrated on the training set itself: among all pairs of
distinct training identities, the class-mean cosine that at most ``fmr`` of them exceed (default
1e-4). So a flag means "closer to a training identity than all but a fraction fmr of pairs of
different real people are to each other". ``threshold`` overrides the calibration.

Optionally (``per_image``) every synthetic image's nearest training image (the statistic Arc2Face
reports as the mean cosine to the closest training image). Everything runs in blocks — never an
N×M matrix in memory — on the GPU when there is one, so 500k × 500k images is a matter of time,
not memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

HIST_BINS = 200


def class_means(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique labels in sorted order, L2-normalised mean of each class's L2-normalised embeddings)."""
    e = np.asarray(embeddings, np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    uniq, inv = np.unique(np.asarray(labels), return_inverse=True)
    sums = np.zeros((len(uniq), e.shape[1]))
    np.add.at(sums, inv, e)
    means = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return uniq, means.astype(np.float32)


def _t(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x, np.float32), device=device)


def nearest(query: np.ndarray, ref: np.ndarray, *, block: int = 8192, device: str | torch.device = "cpu",
            progress: Optional[Callable[[int], None]] = None) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``query`` (unit rows) the largest cosine to a row of ``ref`` and its index;
    ``block × block`` products at a time, ties to the lowest index."""
    dev = torch.device(device)
    best = np.full(len(query), -np.inf, np.float32)
    arg = np.zeros(len(query), np.int64)
    for q0 in range(0, len(query), block):
        q = _t(query[q0 : q0 + block], dev)
        bv = torch.full((len(q),), -float("inf"), device=dev)
        bi = torch.zeros(len(q), dtype=torch.int64, device=dev)
        for r0 in range(0, len(ref), block):
            v, i = (q @ _t(ref[r0 : r0 + block], dev).T).max(dim=1)
            better = v > bv  # strict: an earlier block keeps a tie
            bv, bi = torch.where(better, v, bv), torch.where(better, i + r0, bi)
        best[q0 : q0 + len(q)], arg[q0 : q0 + len(q)] = bv.cpu().numpy(), bi.cpu().numpy()
        if progress:
            progress(len(q))
    return best, arg


@dataclass
class Calibration:
    threshold: float
    fmr_target: float
    impostor_pairs: int
    allowed: int  # impostor pairs allowed above the threshold: floor(fmr · pairs)
    histogram: dict[str, np.ndarray]


def calibrate(means: np.ndarray, fmr: float, *, block: int = 4096, device: str | torch.device = "cpu") -> Calibration:
    """Threshold that at most ``floor(fmr · P)`` of the P pairs of distinct training identities exceed
    (the (k+1)-th largest impostor cosine, flag = strictly above it), streamed by blocks with a running top-(k+1)."""
    n = len(means)
    pairs = n * (n - 1) // 2
    if pairs == 0:
        raise ValueError("the training set needs at least 2 identities to calibrate a threshold")
    k = int(np.floor(fmr * pairs))
    dev = torch.device(device)
    top = torch.empty(0, device=dev)
    edges = np.linspace(-1.0, 1.0, HIST_BINS + 1)
    counts = np.zeros(HIST_BINS, np.int64)
    for r0 in range(0, n, block):
        rows = _t(means[r0 : r0 + block], dev)
        for c0 in range(r0, n, block):
            s = rows @ _t(means[c0 : c0 + block], dev).T
            if c0 == r0:  # strictly upper triangle of the diagonal block
                s = s[torch.triu(torch.ones_like(s, dtype=torch.bool), diagonal=1)]
            s = s.reshape(-1)
            if not len(s):
                continue
            counts += np.histogram(s.float().cpu().numpy(), bins=edges)[0]
            top = torch.cat([top, s])
            if len(top) > k + 1:
                top = torch.topk(top, k + 1).values
    threshold = float(torch.sort(top, descending=True).values[min(k, len(top) - 1)])
    return Calibration(threshold, fmr, pairs, k, {"edges": edges, "counts": counts})


def leakage_audit(synthetic: np.ndarray, synthetic_labels: np.ndarray, training: np.ndarray, training_labels: np.ndarray,
                  *, fmr: float = 1e-4, threshold: Optional[float] = None, per_image: bool = False, top_k: int = 16,
                  block: int = 8192, device: str | torch.device = "cpu",
                  progress: Optional[Callable[[str, int], Callable[[int], None]]] = None) -> dict[str, Any]:
    """The audit's JSON block (plus ``_plot``: arrays for the figures, removed before writing)."""
    s_ids, s_means = class_means(synthetic, synthetic_labels)
    t_ids, t_means = class_means(training, training_labels)
    cal = calibrate(t_means, fmr, block=max(1, block // 2), device=device)
    thr = cal.threshold if threshold is None else float(threshold)
    adv = progress("leakage: identities", len(s_means)) if progress else None
    cos, idx = nearest(s_means, t_means, block=block, device=device, progress=adv)
    flagged = np.flatnonzero(cos > thr)
    order = np.argsort(-cos, kind="stable")
    top = [{"synthetic": str(s_ids[i]), "training": str(t_ids[idx[i]]), "cosine": float(cos[i]), "flagged": bool(cos[i] > thr)}
           for i in order[:top_k]]
    q = np.quantile(cos, [0.5, 0.9, 0.99]) if len(cos) else [np.nan] * 3
    doc: dict[str, Any] = {
        "synthetic_identities": int(len(s_ids)), "training_identities": int(len(t_ids)),
        "threshold": thr,
        "calibration": {"fmr_target": fmr, "impostor_pairs": cal.impostor_pairs, "allowed_above": cal.allowed,
                        "threshold": cal.threshold, "overridden": threshold is not None,
                        "resolution": 1.0 / cal.impostor_pairs,
                        "rule": "cosine between class means of distinct training identities; the threshold is the "
                                "(k+1)-th largest, k = floor(fmr x pairs); flag = strictly above"},
        "flagged": int(len(flagged)), "flagged_share": float(len(flagged) / max(1, len(s_ids))),
        "flagged_identities": [{"synthetic": str(s_ids[i]), "training": str(t_ids[idx[i]]), "cosine": float(cos[i])}
                               for i in flagged[np.argsort(-cos[flagged], kind="stable")]],
        "nearest_identity_cosine": {"mean": float(cos.mean()), "std": float(cos.std()), "min": float(cos.min()),
                                    "max": float(cos.max()), "median": float(q[0]), "p90": float(q[1]), "p99": float(q[2])},
        "top_pairs": top,
        "_plot": {"cos": cos, "impostor_hist": cal.histogram, "threshold": thr, "top": [(int(i), int(idx[i])) for i in order[:top_k]],
                  "synthetic_ids": s_ids, "training_ids": t_ids},
    }
    if per_image:
        e_s = np.asarray(synthetic, np.float32)
        e_s = e_s / np.maximum(np.linalg.norm(e_s, axis=1, keepdims=True), 1e-12)
        e_t = np.asarray(training, np.float32)
        e_t = e_t / np.maximum(np.linalg.norm(e_t, axis=1, keepdims=True), 1e-12)
        adv = progress("leakage: images", len(e_s)) if progress else None
        icos, iidx = nearest(e_s, e_t, block=block, device=device, progress=adv)
        j = int(np.argmax(icos))
        doc["per_image"] = {"images": int(len(e_s)), "training_images": int(len(e_t)),
                            "nearest_cosine_mean": float(icos.mean()), "nearest_cosine_std": float(icos.std()),
                            "nearest_cosine_max": float(icos.max()), "closest": {"synthetic_row": j, "training_row": int(iidx[j])},
                            "note": "mean cosine of each synthetic image to its closest training image (Arc2Face reports 0.37 for its data)"}
        doc["_plot"]["image_cos"] = icos
    return doc
