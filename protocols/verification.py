"""10-fold verification accuracy on insightface ``.bin`` packs (LFW, CFP-FP, CPLFW, AgeDB-30, CALFW, …).

Matches ``recognition/arcface_torch/eval/verification.py`` exactly: raw embeddings of each image and
its mirror are summed, then L2-normalised; distance is squared L2; a pair is "same" iff d < threshold;
10 contiguous unshuffled folds; thresholds ``arange(0, 4, 0.01)``; each fold's threshold maximises
accuracy on the other nine (first maximum on ties); the result is mean ± population std of the
ten held-out accuracies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data.binfile import load_pack
from ..embed import Embedder, l2_normalize
from .base import Benchmark, ProgressFactory, register_benchmark, register_fallback

THRESHOLDS = np.arange(0, 4, 0.01)
N_FOLDS = 10

#: well-known insightface packs and their pair counts (any other ``<name>.bin`` works too)
KNOWN_PAIRS = {"lfw": 6000, "cfp_fp": 7000, "cplfw": 6000, "agedb_30": 6000, "calfw": 6000, "cfp_ff": 7000, "vgg2_fp": 5000}


def contiguous_folds(n: int, k: int = N_FOLDS) -> list[np.ndarray]:
    """Test-index blocks of ``KFold(k, shuffle=False)``: the first ``n % k`` folds get one extra item."""
    sizes = np.full(k, n // k, dtype=int)
    sizes[: n % k] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(k)]


def _correct_counts(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Number of correct decisions at each threshold (pairs × thresholds, vectorised)."""
    predict = dist[:, None] < thresholds[None, :]
    return (predict == issame[:, None]).sum(axis=0)


def verification_accuracy(
    embeddings: np.ndarray, issame: np.ndarray, n_folds: int = N_FOLDS, thresholds: np.ndarray = THRESHOLDS
) -> dict[str, Any]:
    """The reference protocol on L2-normalised embeddings (rows 2k, 2k+1 = pair k)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    e1, e2 = emb[0::2], emb[1::2]
    n = min(len(issame), len(e1))
    issame = issame[:n]
    dist = np.sum(np.square(e1[:n] - e2[:n]), axis=1)
    folds = contiguous_folds(n, n_folds)
    # Per-fold correct counts at every threshold; training accuracy = (total − fold) / training size.
    fold_counts = np.stack([_correct_counts(dist[f], issame[f], thresholds) for f in folds])
    total = fold_counts.sum(axis=0)
    accuracies = np.empty(n_folds)
    best = np.empty(n_folds, dtype=int)
    for i, test in enumerate(folds):
        train_acc = (total - fold_counts[i]) / (n - len(test))
        best[i] = int(np.argmax(train_acc))  # first maximum = smallest threshold
        accuracies[i] = fold_counts[i, best[i]] / len(test)
    return {
        "accuracy": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "fold_accuracies": [float(a) for a in accuracies],
        "fold_thresholds": [float(thresholds[b]) for b in best],
        "threshold": float(np.mean(thresholds[best])),
        "pairs": int(n),
    }


def pair_embeddings(embedder: Embedder, images: np.ndarray, *, flip: bool, batch_size: int | None, progress=None) -> np.ndarray:
    """Normalised embeddings as the reference builds them: raw(image) + raw(mirror), then L2."""
    raw = embedder.embed(images, flip=flip, batch_size=batch_size, progress=progress)
    return l2_normalize(raw)


class BinVerification(Benchmark):
    """A ``<name>.bin`` pack scored with the 10-fold protocol."""

    def files(self) -> list[Path]:
        return [self.data_dir / f"{self.name}.bin"]

    def evaluate(self, embedder: Embedder, *, flip: bool = True, batch_size: int | None = None, progress: ProgressFactory | None = None, workdir: Path | None = None) -> dict[str, Any]:
        path = self.files()[0]
        decode_cb = (lambda total: progress(f"{self.name}: decode", total)) if progress else None
        pack = load_pack(path, progress=decode_cb)
        embed_cb = progress(f"{self.name}: embed", len(pack.images)) if progress else None
        emb = pair_embeddings(embedder, pack.images, flip=flip, batch_size=batch_size, progress=embed_cb)
        result = verification_accuracy(emb, pack.issame)
        result["flip"] = flip
        expected = KNOWN_PAIRS.get(self.name)
        if expected is not None and expected != result["pairs"]:
            result["note"] = f"{result['pairs']} pairs read; the standard {self.name} pack has {expected}"
        return result

    def headline(self, result: dict[str, Any]) -> dict[str, float]:
        return {f"{self.name}/accuracy": result["accuracy"], f"{self.name}/accuracy_std": result["accuracy_std"], f"{self.name}/threshold": result["threshold"]}


register_benchmark(*KNOWN_PAIRS)(BinVerification)


def _bin_fallback(name: str, data_dir: Path) -> Benchmark | None:
    return BinVerification(name, data_dir) if (data_dir / f"{name}.bin").exists() else None


register_fallback(_bin_fallback)
