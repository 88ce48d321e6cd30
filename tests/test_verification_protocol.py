"""The 10-fold protocol equals insightface arcface_torch eval/verification.py on the same embeddings."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from fr_bench.protocols.verification import contiguous_folds, verification_accuracy


def reference_accuracy(embeddings: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """Literal loop form of the reference: KFold(10, shuffle=False), arange(0,4,0.01), d < t, argmax."""
    thresholds = np.arange(0, 4, 0.01)
    e1, e2 = embeddings[0::2], embeddings[1::2]
    n = min(len(issame), e1.shape[0])
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    accs = np.zeros(10)

    def acc(t: float, d: np.ndarray, same: np.ndarray) -> float:
        pred = np.less(d, t)
        tp = np.sum(np.logical_and(pred, same))
        tn = np.sum(np.logical_and(np.logical_not(pred), np.logical_not(same)))
        return float(tp + tn) / d.size

    for i, (train, test) in enumerate(KFold(n_splits=10, shuffle=False).split(np.arange(n))):
        train_acc = np.array([acc(t, dist[train], issame[train]) for t in thresholds])
        best = np.argmax(train_acc)
        accs[i] = acc(thresholds[best], dist[test], issame[test])
    return float(np.mean(accs)), float(np.std(accs))


def _embeddings(pairs: int, dim: int, seed: int, quant: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    issame = rng.random(pairs) < 0.5
    a = rng.normal(size=(pairs, dim))
    b = np.where(issame[:, None], a + rng.normal(scale=0.9, size=(pairs, dim)), rng.normal(size=(pairs, dim)))
    emb = np.empty((2 * pairs, dim))
    emb[0::2], emb[1::2] = a, b
    emb = normalize(emb)
    return emb, issame


@pytest.mark.parametrize("pairs,seed", [(600, 0), (6000, 1), (7000, 2), (613, 3), (57, 4)])
def test_accuracy_equals_reference_loop(pairs: int, seed: int) -> None:
    emb, issame = _embeddings(pairs, 16, seed)
    ours = verification_accuracy(emb, issame)
    ref_mean, ref_std = reference_accuracy(emb, issame)
    assert abs(ours["accuracy"] - ref_mean) < 1e-12
    assert abs(ours["accuracy_std"] - ref_std) < 1e-12
    assert ours["pairs"] == pairs


def test_folds_are_sklearn_contiguous_kfold_blocks() -> None:
    for n in (6000, 7000, 613, 57):
        ref = [test for _, test in KFold(n_splits=10, shuffle=False).split(np.arange(n))]
        ours = contiguous_folds(n)
        assert all(np.array_equal(a, b) for a, b in zip(ours, ref))


def _pairs_from_distances(dist: np.ndarray) -> np.ndarray:
    """Unit 2-d embeddings whose pair distances (squared L2) are exactly ``dist``."""
    theta = np.arccos(np.clip(1 - dist / 2, -1, 1))
    emb = np.zeros((2 * len(dist), 2))
    emb[0::2] = [1.0, 0.0]
    emb[1::2, 0], emb[1::2, 1] = np.cos(theta), np.sin(theta)
    return emb


def _exact_root(t: float) -> float | None:
    """x with x*x == t in float64, if one exists near sqrt(t)."""
    x = np.sqrt(t)
    for cand in (x, np.nextafter(x, 0), np.nextafter(x, 4)):
        if cand * cand == t:
            return float(cand)
    return None


def test_strict_less_than_rule_is_used() -> None:
    # Genuine pairs sit exactly on a grid threshold t_k, impostors just above it. Under the
    # reference's d < t no threshold separates them; under d <= t, t_k would give 100%.
    thresholds = np.arange(0, 4, 0.01)
    k = next(i for i in range(100, 200) if _exact_root(thresholds[i]) is not None)
    t = thresholds[k]
    pairs = 200
    issame = np.arange(pairs) % 2 == 0
    emb = np.zeros((2 * pairs, 1))
    emb[1::2, 0] = np.where(issame, _exact_root(t), np.sqrt(t + 0.004))
    assert np.all(np.sum((emb[0::2] - emb[1::2]) ** 2, 1)[issame] == t)
    ours = verification_accuracy(emb, issame)
    ref_mean, ref_std = reference_accuracy(emb, issame)
    assert ours["accuracy"] == ref_mean and ours["accuracy_std"] == ref_std
    assert ours["accuracy"] == pytest.approx(0.5)  # a <= rule would have scored 1.0


def test_one_fold_shift_would_change_the_result() -> None:
    # A design where fold membership matters: a block of hard pairs in fold 0 only.
    emb, issame = _embeddings(600, 8, 11)
    ours = verification_accuracy(emb, issame)
    shifted = np.roll(np.arange(600), 1)
    idx = np.stack([2 * shifted, 2 * shifted + 1], 1).reshape(-1)
    rolled = verification_accuracy(emb[idx], issame[shifted])
    assert ours["fold_accuracies"] != rolled["fold_accuracies"]
    assert ours["accuracy"] == pytest.approx(reference_accuracy(emb, issame)[0], abs=1e-12)


def test_ties_pick_the_smallest_threshold() -> None:
    # Perfectly separable: every threshold between the two clusters is optimal; the first wins.
    dist = np.concatenate([np.full(50, 0.2 + 1e-6), np.full(50, 3.0)])
    issame = np.concatenate([np.ones(50, bool), np.zeros(50, bool)])
    res = verification_accuracy(_pairs_from_distances(dist), issame)
    assert res["accuracy"] == 1.0
    first_separating = np.arange(0, 4, 0.01)[np.arange(0, 4, 0.01) > 0.2 + 1e-9][0]
    assert all(t == first_separating for t in res["fold_thresholds"])


def test_std_is_population_std() -> None:
    emb, issame = _embeddings(300, 8, 5)
    res = verification_accuracy(emb, issame)
    assert res["accuracy_std"] == pytest.approx(np.std(res["fold_accuracies"], ddof=0), abs=1e-15)
