"""Separability equals pyeer (pyeer rule) and a brute force (strict rule), streams in bounded memory."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch

from fr_bench.metrics.separability import (
    SeparabilityMetric,
    pair_scores,
    separability,
    separability_from_scores,
)

sep_mod = importlib.import_module("fr_bench.metrics.separability")
pyeer_stats = pytest.importorskip("pyeer.eer_stats")


def pyeer_reference(gen: np.ndarray, imp: np.ndarray) -> dict[str, float]:
    """The numbers pyeer 0.5.6 reports (its own functions, as ``get_eer_stats`` chains them)."""
    thr, fm, fnm = pyeer_stats.calculate_roc(gen, imp, rates=False)
    fmr, fnmr = fm / len(imp), fnm / len(gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        idx, _, _, eer = pyeer_stats.get_eer_values(fmr, fnmr)
    out = {"eer": eer, "eer_threshold": thr[idx]}
    for name, op in (("fmr100", 0.01), ("fmr1000", 0.001)):
        i, value = pyeer_stats.get_fmr_op(fmr, fnmr, op)
        out[name], out[name + "_threshold"] = value, thr[i]
    out["genuine_mean"], out["genuine_std"] = np.mean(gen), np.std(gen)
    out["impostor_mean"], out["impostor_std"] = np.mean(imp), np.std(imp)
    out["d_prime"] = pyeer_stats.get_decidability_value(out["genuine_mean"], out["genuine_std"], out["impostor_mean"], out["impostor_std"])
    return out


def brute_force_strict(gen: np.ndarray, imp: np.ndarray, target: float) -> float:
    """Lowest FNMR over every pooled threshold t (accept s >= t) whose FMR <= target; 1 if none."""
    best = 1.0
    for t in np.unique(np.concatenate([gen, imp])):
        fmr = np.count_nonzero(imp >= t) / len(imp)
        if fmr <= target:
            best = min(best, np.count_nonzero(gen < t) / len(gen))
    return best


def assert_matches(gen: np.ndarray, imp: np.ndarray, res: dict) -> None:
    ref = pyeer_reference(gen, imp)
    for key, value in ref.items():
        assert res[key] == pytest.approx(value, abs=1e-9), key
    for name, op in (("fmr100_strict", 0.01), ("fmr1000_strict", 0.001)):
        assert res[name] == pytest.approx(brute_force_strict(gen, imp, op), abs=1e-12), name


def random_sets(rng: np.random.Generator, n_gen: int, n_imp: int, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    gen = rng.normal(rng.uniform(0.1, 0.6), rng.uniform(0.05, 0.2), n_gen)
    imp = rng.normal(0.0, rng.uniform(0.03, 0.15), n_imp)
    if decimals is not None:
        gen, imp = np.round(gen, decimals), np.round(imp, decimals)
    return gen, imp


def test_equals_pyeer_on_continuous_scores() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        gen, imp = random_sets(rng, int(rng.integers(20, 400)), int(rng.integers(100, 4000)))
        assert_matches(gen, imp, separability_from_scores(gen, imp).to_dict())


def test_equals_pyeer_on_tie_heavy_scores_rounded_to_4_decimals() -> None:
    # NegFaceDiff writes its scores with %.4f before pyeer reads them: many exact ties
    rng = np.random.default_rng(1)
    for _ in range(20):
        gen, imp = random_sets(rng, int(rng.integers(50, 500)), int(rng.integers(1000, 6000)), decimals=4)
        assert len(np.unique(imp)) < len(imp)
        assert_matches(gen, imp, separability_from_scores(gen, imp).to_dict())


def test_nearest_and_strict_rules_differ_where_1_percent_fmr_is_not_attainable() -> None:
    # 2,950 impostors: 29/2950 and 30/2950 straddle 1%; pyeer takes the nearest, strict stays <= 1%
    rng = np.random.default_rng(2)
    differ = 0
    for _ in range(15):
        gen, imp = random_sets(rng, 3000, 2950)
        res = separability_from_scores(gen, imp).to_dict()
        assert_matches(gen, imp, res)
        differ += res["fmr100"] != res["fmr100_strict"]
    assert differ > 0


def test_equals_pyeer_when_few_distinct_values_and_curves_do_not_cross() -> None:
    cases = [
        (np.array([0.5, 0.5, 0.5]), np.array([0.5, 0.5])),
        (np.array([0.1, 0.2]), np.array([0.3, 0.4, 0.5])),  # genuines below impostors
        (np.array([0.9, 1.0]), np.array([-0.0, 0.0, -0.1])),  # signed zeros are one value
        (np.array([0.5]), np.array([0.5, 0.5, -0.2, -0.3, -0.3])),  # no crossing: pyeer's EER = 1
    ]
    rng = np.random.default_rng(3)
    for _ in range(30):
        values = rng.normal(0, 0.3, int(rng.integers(1, 6)))
        cases.append((rng.choice(values, int(rng.integers(1, 40))), rng.choice(values, int(rng.integers(1, 300)))))
    for gen, imp in cases:
        assert_matches(gen, imp, separability_from_scores(gen, imp).to_dict())


def test_fdr_is_the_squared_mean_gap_over_summed_variances() -> None:
    rng = np.random.default_rng(4)
    gen, imp = random_sets(rng, 500, 5000)
    res = separability_from_scores(gen, imp)
    expected = (gen.mean() - imp.mean()) ** 2 / (gen.var() + imp.var())
    assert res.fdr == pytest.approx(expected, rel=1e-12)
    assert res.fdr == pytest.approx(res.d_prime ** 2 / 2, rel=1e-12)


def scores_with(mean: float, std: float, n: int, seed: int) -> np.ndarray:
    z = np.random.default_rng(seed).normal(size=n)
    return mean + std * (z - z.mean()) / z.std()


# AdaptDiff Table 3 (published_results.md): G mean, G std, I mean, I std, printed FDR
ADAPTDIFF_TABLE3 = {
    "CASIA-WebFace": (0.536, 0.215, 0.003, 0.070, 5.541),
    "LFW": (0.708, 0.099, 0.003, 0.070, 33.301),
    "FFHQ IDiff-Face": (0.208, 0.104, 0.015, 0.059, 2.631),
    "FFHQ NegFaceDiff": (0.319, 0.123, 0.013, 0.058, 5.052),
    "FFHQ AdaptDiff": (0.356, 0.129, 0.015, 0.058, 5.806),
    "C-WF IDiff-Face": (0.151, 0.101, 0.010, 0.059, 1.454),
    "C-WF NegFaceDiff": (0.294, 0.140, 0.007, 0.058, 3.579),
    "C-WF AdaptDiff": (0.332, 0.150, 0.008, 0.058, 4.081),
}


@pytest.mark.parametrize("row", list(ADAPTDIFF_TABLE3))
def test_fdr_reproduces_adaptdiff_table3_from_its_printed_means_and_stds(row: str) -> None:
    gm, gs, im, is_, printed = ADAPTDIFF_TABLE3[row]
    res = separability_from_scores(scores_with(gm, gs, 2000, 0), scores_with(im, is_, 20000, 1))
    assert res.genuine_mean == pytest.approx(gm, abs=1e-12) and res.impostor_std == pytest.approx(is_, abs=1e-12)
    # the printed inputs are rounded to 3 decimals; the ratio amplifies that to ~1.5% at most
    assert res.fdr == pytest.approx(printed, rel=0.02)
    # d' (not squared, not halved) would not reproduce the table
    assert abs(res.d_prime - printed) / printed > 0.1


# ----------------------------------------------------------------------------------- embeddings
def clustered_embeddings(n_id: int, per: int, dim: int = 16, seed: int = 0, spread: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_id, dim))
    emb = np.repeat(centres, per, axis=0) + spread * rng.normal(size=(n_id * per, dim))
    labels = np.repeat(np.arange(n_id), per)
    perm = rng.permutation(len(labels))  # labels need not arrive grouped
    return emb[perm].astype(np.float32), labels[perm]


def test_all_pairs_counts_match_the_protocol() -> None:
    emb, labels = clustered_embeddings(30, 7)
    gen, imp = pair_scores(emb, labels)
    assert len(gen) == 30 * 21
    assert len(imp) == (210 * 209) // 2 - 30 * 21
    normed = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = normed @ normed.T
    iu = np.triu_indices(len(labels), 1)
    same = labels[iu[0]] == labels[iu[1]]
    assert np.sort(gen) == pytest.approx(np.sort(cos[iu][same]), abs=1e-5)
    assert np.sort(imp) == pytest.approx(np.sort(cos[iu][~same]), abs=1e-5)


def exact_embeddings(n_ids: int, per: int, seed: int, dim: int = 64, flips: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors whose every dot product is exact in float32 in any summation order: entries are
    ±1/8 in 64 dimensions (norm exactly 1), so a cosine is (agreements − disagreements)/64, a
    multiple of 2⁻⁵. Each image flips ``flips`` random signs of its identity's pattern."""
    rng = np.random.default_rng(seed)
    base = rng.choice([-1.0, 1.0], size=(n_ids, dim))
    emb = np.repeat(base, per, axis=0)
    for row in emb:
        row[rng.choice(dim, flips, replace=False)] *= -1
    return (emb / 8.0).astype(np.float32), np.repeat(np.arange(n_ids), per)


def test_streamed_blocks_without_cache_equal_pyeer_on_the_same_scores() -> None:
    """``separability`` recomputes the cosines in its own blocks; with cosines that are exact in
    float32 whatever the block shape, BLAS kernel or thread count, every field must equal pyeer's on
    ``pair_scores``' numbers exactly (to 1e-12), with and without the cache. (Continuous scores are
    compared with pyeer score-for-score in the tests above.)"""
    emb, labels = exact_embeddings(25, 6, seed=1)
    gen, imp = pair_scores(emb, labels)
    assert np.all(np.asarray(gen) * 32 == np.round(np.asarray(gen) * 32))  # exact multiples of 2⁻⁵
    ref = pyeer_reference(gen, imp)
    for kwargs in ({}, {"block_bytes": 1 << 15, "cache_bytes": 0}):
        res = separability(emb, labels, **kwargs).to_dict()
        for key, value in ref.items():
            assert res[key] == pytest.approx(value, abs=1e-12), key
        for name, op in (("fmr100_strict", 0.01), ("fmr1000_strict", 0.001)):
            assert res[name] == pytest.approx(brute_force_strict(gen, imp, op), abs=1e-12), name


def test_metric_object_equals_the_functional_form() -> None:
    emb, labels = clustered_embeddings(20, 5, seed=2)
    metric = SeparabilityMetric()
    for s in range(0, len(labels), 17):
        metric.update(torch.from_numpy(emb[s : s + 17]), torch.from_numpy(labels[s : s + 17]))
    assert metric.compute().to_dict() == separability(emb, labels).to_dict()


def test_second_pass_fetches_only_a_small_share_of_the_impostors(monkeypatch: pytest.MonkeyPatch) -> None:
    fetched: list[int] = []
    real = sep_mod._fetch
    monkeypatch.setattr(sep_mod, "_fetch", lambda blocks, ranges: fetched.append(len(out := real(blocks, ranges))) or out)
    rng = np.random.default_rng(5)
    gen, imp = random_sets(rng, 20000, 1_000_000)
    res = separability_from_scores(gen, imp, chunk=1 << 17)
    assert res.impostor_pairs == 1_000_000
    assert fetched and fetched[0] < 20_000  # < 2% of the impostors are ever held as values


def test_torch_backend_equals_numpy_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA blocks take the torch code path; force it on CPU tensors to check both agree
    rng = np.random.default_rng(6)
    gen, imp = random_sets(rng, 300, 20000, decimals=3)
    expected = separability_from_scores(gen, imp).to_dict()

    def as_torch(x):
        t = torch.from_numpy(np.asarray(x, np.float64)) if isinstance(x, np.ndarray) else x
        return t.reshape(-1).to(torch.float64)

    monkeypatch.setattr(sep_mod, "_as_float64", as_torch)
    got = separability_from_scores(gen, imp).to_dict()
    for key, value in expected.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, abs=1e-12), key


def test_impostor_sampling_is_seeded_and_recorded() -> None:
    emb, labels = clustered_embeddings(40, 6, seed=3)
    a = separability(emb, labels, max_impostors=3000, seed=7)
    b = separability(emb, labels, max_impostors=3000, seed=7)
    c = separability(emb, labels, max_impostors=3000, seed=8)
    assert a.impostor_pairs == 3000 and a.genuine_pairs == 40 * 15
    assert a.impostor_sampling == {"max_impostors": 3000, "seed": 7, "population": (240 * 239) // 2 - 600,
                                   "method": "uniform with replacement over cross-identity image pairs"}
    assert a.to_dict() == b.to_dict() and a.impostor_mean != c.impostor_mean
    exact = separability(emb, labels, max_impostors=10 ** 9)
    assert exact.impostor_sampling is None and exact.impostor_pairs == (240 * 239) // 2 - 600


def test_rejects_sets_without_genuine_or_impostor_pairs() -> None:
    with pytest.raises(ValueError, match="genuine"):
        separability(np.eye(3, dtype=np.float32), np.arange(3))
    with pytest.raises(ValueError, match="impostor"):
        separability(np.eye(3, dtype=np.float32), np.zeros(3))
