"""Confidence intervals: identity bootstrap semantics, coverage on a population with a known EER, seeds."""

from __future__ import annotations

import json
from math import erf, sqrt
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fr_bench.cli import cli
from fr_bench.metrics.bootstrap import ScoreSet, bootstrap_scores, fold_interval, score_set
from fr_bench.metrics.separability import separability


def _brute(gen: list[float], imp: list[float]) -> dict[str, float]:
    """The replicate rules on an explicit score list: accept s >= t over every pooled unique score."""
    g, i = np.array(gen, np.float64), np.array(imp, np.float64)
    ts = np.concatenate([[np.inf], np.unique(np.concatenate([g, i]))[::-1]])
    fmr = np.array([(i >= t).mean() for t in ts])
    fnmr = np.array([(g < t).mean() for t in ts])
    k = int(np.argmin(np.abs(fmr - fnmr)))
    return {"eer": (fmr[k] + fnmr[k]) / 2, "fmr100": fnmr[fmr <= 0.01].min(), "fmr1000": fnmr[fmr <= 0.001].min(),
            "genuine_mean": g.mean(), "impostor_mean": i.mean(), "genuine_std": g.std(), "impostor_std": i.std()}


def _toy(seed: int = 0, n: int = 12, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n, 16))
    emb = np.repeat(centres, k, 0) + 0.9 * rng.normal(size=(n * k, 16))
    return emb.astype(np.float32), np.repeat(np.arange(n), k)


def test_a_replicate_weights_scores_as_if_its_identities_were_copied() -> None:
    emb, labels = _toy()
    scores = score_set(emb, labels)
    w = np.array([2, 0, 1, 3, 0, 1, 1, 0, 2, 1, 0, 1], float)
    got = scores.stats(w)
    # explicit multiset: identity i's genuine scores w_i times; impostor pair (i, j) w_i·w_j times
    gen = [s for s, i in zip(scores.genuine, scores.genuine_id) for _ in range(int(w[i]))]
    imp = [s for s, a, b in zip(scores.impostor, scores.impostor_a, scores.impostor_b) for _ in range(int(w[a] * w[b]))]
    want = _brute(gen, imp)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_unit_weights_give_the_exact_strict_operating_points() -> None:
    emb, labels = _toy(seed=3, n=30, k=5)
    exact = separability(emb, labels)
    unit = score_set(emb, labels).stats()
    assert unit["fmr100"] == pytest.approx(exact.fmr100_strict, abs=1e-12)
    assert unit["fmr1000"] == pytest.approx(exact.fmr1000_strict, abs=1e-12)
    # cosines in float32 here, float64 there
    assert unit["impostor_mean"] == pytest.approx(exact.impostor_mean, abs=1e-6)
    assert unit["eer"] == pytest.approx(exact.eer, abs=2.0 / exact.genuine_pairs)  # same crossing, two EER conventions


def _phi(x: float) -> float:
    return 0.5 * (1 + erf(x / sqrt(2)))


@pytest.mark.slow
def test_95_percent_intervals_cover_a_known_eer_in_about_95_percent_of_seeds() -> None:
    """Scores with identity effects: genuine μG + a_i + ε, impostor μI + b_i + b_j + η, so the
    population EER is Φ(−(μG − μI)/(σG + σI)) with σG² = τ² + σ², σI² = 2β² + η²."""
    mu_g, mu_i, tau, sig, beta, eta = 0.5, 0.0, 0.12, 0.15, 0.06, 0.12
    s_g, s_i = sqrt(tau ** 2 + sig ** 2), sqrt(2 * beta ** 2 + eta ** 2)
    true_eer = _phi(-(mu_g - mu_i) / (s_g + s_i))
    seeds, hits = 300, 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        n, k = 60, 5
        a, b = rng.normal(0, tau, n), rng.normal(0, beta, n)
        gid = np.repeat(np.arange(n), k * (k - 1) // 2)
        ia, ib = np.triu_indices(n, 1)
        scores = ScoreSet(mu_g + a[gid] + rng.normal(0, sig, len(gid)), gid,
                          mu_i + b[ia] + b[ib] + rng.normal(0, eta, len(ia)), ia, ib, n)
        lo, hi = bootstrap_scores(scores, 200, seed)["eer"]
        hits += lo <= true_eer <= hi
    # binomial sd at p = 0.95 over 300 seeds is 1.3 points: ±3 sd, and percentile intervals at n = 60
    # identities run a point or two short of nominal
    assert 0.90 <= hits / seeds <= 0.99, hits / seeds


def test_intervals_are_reproducible_for_a_seed_and_change_with_it() -> None:
    emb, labels = _toy(seed=5, n=20)
    scores = score_set(emb, labels)
    a, b, c = (bootstrap_scores(scores, 100, s) for s in (7, 7, 8))
    assert a == b and a != c
    assert fold_interval([0.9, 0.95, 0.92, 0.97, 0.91, 0.93, 0.96, 0.94, 0.9, 0.95], 500, 1) == \
        fold_interval([0.9, 0.95, 0.92, 0.97, 0.91, 0.93, 0.96, 0.94, 0.9, 0.95], 500, 1)


def test_impostor_sampling_beyond_the_cap_is_said() -> None:
    emb, labels = _toy(seed=1, n=30, k=4)
    s = score_set(emb, labels, max_impostors=1000, seed=0)
    assert s.impostor_sampled and len(s.impostor) == 1000 and s.impostor_total == (120 * 120 - 30 * 16) // 2
    assert (s.impostor_a != s.impostor_b).all()


def test_metrics_cli_writes_ci95_beside_each_value(tmp_path: Path, tiny_iresnet_path: Path) -> None:
    import cv2

    from conftest import face_like_images

    rng = np.random.default_rng(0)
    for i, base in enumerate(face_like_images(8, seed=4)):
        d = tmp_path / "ds" / f"id{i}"
        d.mkdir(parents=True)
        for k in range(3):
            cv2.imwrite(str(d / f"{k}.png"), np.clip(base.astype(int) + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8))
    out = tmp_path / "m.json"
    args = ["--workdir", str(tmp_path / "w"), "metrics", str(tmp_path / "ds"), "--fr-model", str(tiny_iresnet_path), "--separability",
            "--bootstrap", "200", "--seed", "3", "--device", "cpu", "--no-track", "--output", str(out)]
    res = CliRunner().invoke(cli, args, obj={})
    assert res.exit_code == 0, res.output
    sep = json.loads(out.read_text())["separability"]
    for key in ("eer", "fmr100_strict", "fmr1000_strict", "fdr", "genuine_mean", "impostor_mean"):
        lo, hi = sep[f"{key}_ci95"]
        assert lo <= hi, key
    assert sep["genuine_mean_ci95"][0] <= sep["genuine_mean"] <= sep["genuine_mean_ci95"][1]
    assert sep["bootstrap"]["replicates"] == 200 and sep["bootstrap"]["unit"].startswith("identities")
    again = tmp_path / "m2.json"
    assert CliRunner().invoke(cli, args[:-1] + [str(again)], obj={}).exit_code == 0
    assert json.loads(again.read_text())["separability"]["eer_ci95"] == sep["eer_ci95"]
