"""Identity leakage audit: planted near-copies of training identities are flagged, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import face_like_images
from fr_bench.cli import cli
from fr_bench.metrics.leakage import calibrate, class_means, leakage_audit, nearest

PLANTED = {"s03": "t07", "s05": "t01", "s08": "t12"}  # synthetic identity → the training identity it copies


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def planted_embeddings(seed: int = 0, dim: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """20 training and 10 synthetic identities × 4 images; three synthetic ones are near-copies.

    The other synthetic identities live in dimensions the training identities do not use, so they are
    clearly distinct people: with 20 × 10 comparisons at a per-pair FMR of 1/190, random directions
    would give a false flag about once per run — the audit's own false-flag rate, not a bug.
    """
    rng = np.random.default_rng(seed)
    t_centres = np.zeros((20, dim))
    t_centres[:, : dim // 2] = rng.normal(size=(20, dim // 2))
    t_centres = _unit(t_centres)
    s_centres = np.zeros((10, dim))
    s_centres[:, dim // 2 :] = rng.normal(size=(10, dim - dim // 2))
    s_centres = _unit(s_centres)
    for s, t in PLANTED.items():
        s_centres[int(s[1:])] = _unit(t_centres[int(t[1:])] + 0.02 * rng.normal(size=dim))
    t_emb = _unit(np.repeat(t_centres, 4, 0) + 0.3 * rng.normal(size=(80, dim)) / np.sqrt(dim))
    s_emb = _unit(np.repeat(s_centres, 4, 0) + 0.3 * rng.normal(size=(40, dim)) / np.sqrt(dim))
    return (s_emb.astype(np.float32), np.repeat([f"s{i:02d}" for i in range(10)], 4),
            t_emb.astype(np.float32), np.repeat([f"t{i:02d}" for i in range(20)], 4))


def test_planted_copies_are_exactly_the_flagged_identities() -> None:
    s, sl, t, tl = planted_embeddings()
    doc = leakage_audit(s, sl, t, tl, fmr=1e-4)
    got = {f["synthetic"]: f["training"] for f in doc["flagged_identities"]}
    assert got == PLANTED and doc["flagged"] == 3 and doc["flagged_share"] == pytest.approx(0.3)
    assert {p["synthetic"] for p in doc["top_pairs"][:3]} == set(PLANTED) and all(p["flagged"] for p in doc["top_pairs"][:3])
    # 190 training pairs: floor(1e-4 · 190) = 0 allowed above, so the threshold is the largest impostor cosine
    _, tm = class_means(t, tl)
    c = tm @ tm.T
    assert doc["threshold"] == pytest.approx(c[np.triu_indices(20, 1)].max(), abs=1e-6)
    assert doc["calibration"]["impostor_pairs"] == 190 and doc["calibration"]["allowed_above"] == 0


def test_a_tiny_block_size_gives_the_unblocked_result() -> None:
    s, sl, t, tl = planted_embeddings(seed=1)
    big = leakage_audit(s, sl, t, tl, per_image=True, block=100_000)
    tiny = leakage_audit(s, sl, t, tl, per_image=True, block=3)
    assert [p["synthetic"] for p in tiny["top_pairs"]] == [p["synthetic"] for p in big["top_pairs"]]
    assert [p["training"] for p in tiny["top_pairs"]] == [p["training"] for p in big["top_pairs"]]
    # float32 dot products of unit 64-d rows: any blocking difference is a few ulp (< 64·6e-8)
    np.testing.assert_allclose(tiny["_plot"]["cos"], big["_plot"]["cos"], atol=5e-6, rtol=0)
    np.testing.assert_allclose(tiny["_plot"]["image_cos"], big["_plot"]["image_cos"], atol=5e-6, rtol=0)
    assert tiny["threshold"] == pytest.approx(big["threshold"], abs=5e-6) and tiny["flagged"] == big["flagged"]


def test_nearest_and_calibration_equal_brute_force() -> None:
    rng = np.random.default_rng(2)
    q, r = _unit(rng.normal(size=(37, 16))).astype(np.float32), _unit(rng.normal(size=(53, 16))).astype(np.float32)
    v, i = nearest(q, r, block=5)
    full = q @ r.T
    np.testing.assert_array_equal(i, full.argmax(1))
    np.testing.assert_allclose(v, full.max(1), atol=1e-6)
    cal = calibrate(r, fmr=0.01, block=7)
    pairs = np.sort((r @ r.T)[np.triu_indices(53, 1)])[::-1]
    k = int(0.01 * len(pairs))
    assert cal.allowed == k and cal.threshold == pytest.approx(pairs[k], abs=1e-6)
    assert (pairs > cal.threshold + 1e-6).sum() <= k


def write_identity(root: Path, name: str, base: np.ndarray, n: int, rng: np.random.Generator) -> None:
    d = root / name
    d.mkdir(parents=True)
    for k in range(n):
        img = np.clip(base.astype(int) + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(d / f"{k}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def test_cli_audit_on_images_flags_the_copied_identities_and_draws_them(tmp_path: Path, tiny_iresnet_path: Path) -> None:
    rng = np.random.default_rng(0)
    train_bases = face_like_images(12, seed=21)
    syn_bases = face_like_images(6, seed=22)
    syn_bases[1], syn_bases[4] = train_bases[3], train_bases[9]  # two synthetic identities copy training ones
    for i, b in enumerate(train_bases):
        write_identity(tmp_path / "train", f"t{i:02d}", b, 3, rng)
    for i, b in enumerate(syn_bases):
        write_identity(tmp_path / "syn", f"s{i:02d}", b, 3, rng)
    out = tmp_path / "m.json"
    res = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "w"), "metrics", str(tmp_path / "syn"), "--fr-model", str(tiny_iresnet_path),
                                   "--leakage", "--training-images", str(tmp_path / "train"), "--leakage-images", "--leakage-top-k", "4",
                                   # a random-weight r18 puts different patterns at cosines up to ~0.85 (it has
                                   # learnt no identities), so this test fixes the threshold between that and the
                                   # ≥ 0.99 of a noisy copy; the calibration is tested on embeddings above
                                   "--leakage-threshold", "0.98",
                                   "--device", "cpu", "--no-track", "--output", str(out)], obj={})
    assert res.exit_code == 0, res.output
    lk = json.loads(out.read_text())["leakage"]
    assert lk["threshold"] == 0.98 and lk["calibration"]["overridden"] and lk["calibration"]["impostor_pairs"] == 66
    assert {(f["synthetic"], f["training"]) for f in lk["flagged_identities"]} == {("s01", "t03"), ("s04", "t09")}
    assert lk["synthetic_identities"] == 6 and lk["training_identities"] == 12 and lk["training"]["rows"] == 36
    assert lk["per_image"]["nearest_cosine_max"] > 0.99 and len(lk["top_pairs"]) == 4
    for png in (lk["histogram_png"], lk["pairs_png"]):
        assert Path(png).read_bytes()[:4] == b"\x89PNG"
    grid = cv2.imread(lk["pairs_png"])
    assert grid.shape[0] > grid.shape[1]  # one row per pair, two columns
    assert "leakage" in res.output


def test_training_embeddings_must_match_the_model_width_one_line(tmp_path: Path, tiny_iresnet_path: Path) -> None:
    syn = tmp_path / "syn"
    rng = np.random.default_rng(0)
    for i, b in enumerate(face_like_images(2, seed=1)):
        write_identity(syn, f"s{i}", b, 2, rng)
    np.save(tmp_path / "e.npy", np.zeros((4, 8), np.float32))
    np.save(tmp_path / "l.npy", np.arange(4))
    res = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "w"), "metrics", str(syn), "--fr-model", str(tiny_iresnet_path), "--leakage",
                                   "--training-embeddings", str(tmp_path / "e.npy"), "--training-labels", str(tmp_path / "l.npy"),
                                   "--no-track", "--device", "cpu"], obj={})
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "8-d" in errors[0] and "e.npy" in errors[0], res.output
    np.save(tmp_path / "p.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    res = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "w"), "metrics", str(syn), "--fr-model", str(tiny_iresnet_path), "--leakage",
                                   "--training-embeddings", str(tmp_path / "p.npy"), "--training-labels", str(tmp_path / "l.npy"),
                                   "--no-track", "--device", "cpu"], obj={})
    assert res.exit_code == 2 and "unsafe pickle refused" in res.output, res.output
