"""Identity contexts: sources, the greedy similarity filter, negatives, safe context files, CLI."""

from __future__ import annotations

import json
import pathlib
import pickle
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import face_like_images
from fr_bench.cli import cli
from fr_bench.errors import InputError
from fr_bench.identities import (
    FileSource,
    GreedyFilter,
    PcaSource,
    UniformSource,
    build_identities,
    greedy_filter,
    load_embedding_file,
    read_identities,
    select_negatives,
)


def run_cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args), obj={})
    return res.exit_code, res.output


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def naive_greedy(x: np.ndarray, t: float, limit: int | None = None) -> list[int]:
    """The rule as stated: walk in order, keep i iff cos(i, k) < t for every kept k."""
    x = unit(x)
    kept: list[int] = []
    for i in range(len(x)):
        if limit is not None and len(kept) == limit:
            break
        if all(float(np.dot(x[i], x[k])) < t for k in kept):
            kept.append(i)
    return kept


def clustered(n: int, dim: int, centres: int, spread: float, seed: int) -> np.ndarray:
    """Vectors around a few centres, so that many pairs are above the thresholds tested."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim))
    return c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, dim))


# ------------------------------------------------------------------------------------- filter
@pytest.mark.parametrize("block", [1, 7, 64, 1024])
@pytest.mark.parametrize("t", [0.2, 0.5, 0.9])
def test_greedy_filter_equals_naive_loop(block: int, t: float) -> None:
    x = clustered(400, 16, 12, 0.6, seed=3)
    expected = naive_greedy(x, t)
    assert 5 <= len(expected) < 400  # the data really exercises rejections
    assert greedy_filter(x, t, block=block).tolist() == expected


@pytest.mark.parametrize("limit", [1, 5, 37])
def test_greedy_filter_stops_at_the_limit_like_the_naive_loop(limit: int) -> None:
    x = clustered(300, 8, 50, 0.5, seed=5)
    f = GreedyFilter(8, 0.6, limit=limit, device="cpu", block=16)
    for s in range(0, len(x), 50):  # fed in pieces, as sources stream
        f.feed(unit(x[s : s + 50]))
    kept, index = f.result()
    expected = naive_greedy(x, 0.6, limit)
    assert index.tolist() == expected
    np.testing.assert_array_equal(kept, unit(x)[expected])
    assert f.consumed == expected[-1] + 1


def test_cosine_equal_to_the_threshold_is_rejected() -> None:
    # (3, 4)/5 has cosine exactly fl(0.6) with (1, 0): "keep only if < threshold"
    x = np.array([[1.0, 0.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    for block in (1, 1024):  # across blocks and within one
        assert greedy_filter(x, 0.6, block=block).tolist() == [0, 2]
        assert greedy_filter(x, np.nextafter(0.6, 1.0), block=block).tolist() == [0, 1, 2]


def test_kept_identities_respect_the_threshold_and_report_their_max_cosine() -> None:
    ids = build_identities(UniformSource(seed=4), 300, 0.15, device="cpu")
    e = ids.embeddings.astype(np.float64)
    g = e @ e.T
    np.fill_diagonal(g, -1)
    assert ids.info["counts"]["rejected"] > 0
    assert g.max() < 0.15 + 1e-6
    assert ids.info["max_pairwise_cosine"] == pytest.approx(g.max(), abs=1e-6)
    assert ids.info["counts"]["candidates"] == ids.info["counts"]["kept"] + ids.info["counts"]["rejected"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_filter_matches_cpu() -> None:
    x = clustered(3000, 512, 40, 1.2, seed=9)
    assert greedy_filter(x, 0.3, device="cuda", block=256).tolist() == greedy_filter(x, 0.3, device="cpu").tolist()


def test_too_few_identities_is_one_clear_error(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", np.tile(np.eye(512)[:1], (5, 1)))  # five copies of one vector
    code, out = run_cli("identities", "--source", "file", "--file", str(tmp_path / "c.npy"), "-n", "3",
                        "--out", str(tmp_path / "o"), "--device", "cpu")
    assert code == 2 and "only 1 of 3 identities" in out and "Traceback" not in out


# ------------------------------------------------------------------------------------- sources
def test_uniform_is_unit_norm_seeded_and_independent_of_block_size() -> None:
    a = build_identities(UniformSource(seed=11), 50, 0.3, device="cpu").embeddings
    b = build_identities(UniformSource(seed=11), 50, 0.3, device="cpu", block=8).embeddings
    c = build_identities(UniformSource(seed=12), 50, 0.3, device="cpu").embeddings
    assert a.shape == (50, 512) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a.astype(np.float64), axis=1), 1.0, atol=1e-6)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    rng = np.random.default_rng(11)  # the definition: normalize(randn(512)) in draw order
    np.testing.assert_allclose(a, unit(rng.standard_normal((50, 512))), atol=1e-7)


def test_pca_source_samples_the_reference_gaussian(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mean = unit(rng.standard_normal((1, 512)))[0] * 3.0
    basis = rng.standard_normal((3, 512))
    basis -= np.outer(basis @ unit(mean[None])[0], unit(mean[None])[0])  # orthogonal to the mean
    basis = np.linalg.qr(basis.T)[0].T  # 3 orthonormal directions
    sd = np.array([0.5, 0.3, 0.1])
    ref = mean + (rng.standard_normal((4000, 3)) * sd) @ basis  # norms stay ≈ 3, so normalising is a mild shrink
    np.save(tmp_path / "ref.npy", ref.astype(np.float32))
    src = PcaSource(tmp_path / "ref.npy", seed=1, components=3)
    ids = build_identities(src, 2000, None, device="cpu")
    e = ids.embeddings.astype(np.float64)
    span = np.vstack([unit(mean[None]), basis])  # every sample lies in span(mean, components)
    resid = e - (e @ span.T) @ span
    assert np.abs(resid).max() < 1e-5
    ref_unit = unit(ref)
    for k in range(3):  # same spread along each component as the (normalised) reference
        assert np.std(e @ basis[k]) == pytest.approx(np.std(ref_unit @ basis[k]), rel=0.08)
    assert ids.info["source_detail"]["pca_components"] == 3 and ids.info["seed"] == 1


def test_pca_reference_of_wrong_dimension_names_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "ref.npy", np.ones((10, 128), np.float32))
    with pytest.raises(InputError, match=r"ref\.npy: holds a 10×128 array; identity contexts must be N×512"):
        PcaSource(tmp_path / "ref.npy", seed=0)


def idiff_face_contexts(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """IDiff-Face's context file content: {str(index): normalize(randn(512)) as float32}."""
    rng = np.random.default_rng(seed)
    return {str(i): unit(rng.standard_normal((1, 512)))[0].astype(np.float32) for i in range(n)}


def as_numpy1_file(src: Path, dst: Path) -> None:
    """Rewrite a torch.save zip as numpy 1.x would have pickled it (numpy.core module names)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(name, data)


def test_file_source_reads_idiff_face_torch_saved_dicts(tmp_path: Path) -> None:
    ctx = idiff_face_contexts(6)
    torch.save(ctx, tmp_path / "random_synthetic_uniform_6.npy")
    as_numpy1_file(tmp_path / "random_synthetic_uniform_6.npy", tmp_path / "np1.npy")
    for name in ("random_synthetic_uniform_6.npy", "np1.npy"):
        arr, keys = load_embedding_file(tmp_path / name)
        assert keys == [str(i) for i in range(6)]
        np.testing.assert_array_equal(arr, np.stack([ctx[k] for k in keys]).astype(np.float64))
    src = FileSource(tmp_path / "np1.npy")
    ids = build_identities(src, None, 0.3, device="cpu")
    assert ids.info["labels"] == [str(i) for i in range(6)] and ids.info["seed"] is None


def test_file_source_reads_plain_arrays(tmp_path: Path) -> None:
    x = np.random.default_rng(2).standard_normal((7, 512)).astype(np.float32)
    np.save(tmp_path / "uiface.npy", x)
    ids = build_identities(FileSource(tmp_path / "uiface.npy"), 4, 0.3, device="cpu")
    np.testing.assert_allclose(ids.embeddings, unit(x[:4]), atol=1e-7)


class _Touch:
    """Unpickling this would create ``path`` (the marker the tests look for)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):  # type: ignore[override]
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.mark.parametrize("fmt", ["torch", "pickle", "npy-object"])
def test_context_file_carrying_code_is_refused_and_never_runs(tmp_path: Path, fmt: str) -> None:
    marker = tmp_path / "PWNED"
    payload = {**idiff_face_contexts(2), "2": _Touch(marker)}
    path = tmp_path / "contexts.npy"
    if fmt == "torch":
        torch.save(payload, path)
    elif fmt == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        np.save(path, np.array([payload], dtype=object), allow_pickle=True)
    code, out = run_cli("identities", "--source", "file", "--file", str(path), "--out", str(tmp_path / "o"), "--device", "cpu")
    assert code == 2 and "contexts.npy" in out and "Traceback" not in out
    assert not marker.exists()
    assert not (tmp_path / "o").exists()
    if fmt == "torch":
        assert "refused to unpickle" in out


def test_wrong_dimension_is_an_error_naming_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "ctx256.npy", np.ones((4, 256), np.float32))
    code, out = run_cli("identities", "--source", "file", "--file", str(tmp_path / "ctx256.npy"), "--out", str(tmp_path / "o"))
    assert code == 2 and "ctx256.npy" in out and "4×256" in out and "N×512" in out
    torch.save({"0": np.ones(512, np.float32), "1": np.ones(511, np.float32)}, tmp_path / "dict.npy")
    code, out = run_cli("identities", "--source", "file", "--file", str(tmp_path / "dict.npy"), "--out", str(tmp_path / "o"))
    assert code == 2 and "dict.npy" in out and "entry '1'" in out and "512-d" in out


def test_embed_source_uses_the_fr_model_on_resized_images(tmp_path: Path) -> None:
    from fr_bench.align import resize_to
    from fr_bench.models import iresnet, load_fr_model

    torch.manual_seed(0)
    torch.save(iresnet("r18", num_features=512).state_dict(), tmp_path / "r18.pt")
    folder = tmp_path / "samples"
    sizes = [128, 112, 200, 96]
    for i, (img, s) in enumerate(zip(face_like_images(4, seed=1, size=128), sizes)):
        (folder / f"sub{i % 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"sub{i % 2}" / f"{i}.png"), cv2.resize(img, (s, s)))
    code, out = run_cli("identities", "--source", "embed", "--images", str(folder), "--fr-model", str(tmp_path / "r18.pt"),
                        "--no-filter", "--out", str(tmp_path / "o"), "--device", "cpu")
    assert code == 0, out
    ids = read_identities(tmp_path / "o")
    files = sorted(folder.rglob("*.png"))
    batch = np.stack([resize_to(cv2.imread(str(f)), 112)[:, :, ::-1] for f in files])
    ref = unit(load_fr_model(tmp_path / "r18.pt", device="cpu").embed(np.ascontiguousarray(batch)))
    np.testing.assert_allclose(ids.embeddings, ref, atol=1e-5)
    assert ids.info["labels"] == [f.relative_to(folder).as_posix() for f in files]


def test_embed_source_refuses_a_model_of_the_wrong_width(tmp_path: Path, tiny_iresnet_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), face_like_images(1)[0])
    code, out = run_cli("identities", "--source", "embed", "--images", str(tmp_path / "imgs"), "--fr-model",
                        str(tiny_iresnet_path), "--out", str(tmp_path / "o"), "--device", "cpu")
    assert code == 2 and "r18.pt" in out and "32-d" in out


# ----------------------------------------------------------------------------------- negatives
def test_far_negative_is_the_argmin_cosine_over_the_pool() -> None:
    e = unit(clustered(60, 512, 6, 1.0, seed=8))
    for pool in (60, 25):
        idx, cos = select_negatives(e, "far", pool, device="cpu")
        for i in range(60):
            sims = [float(np.dot(e[i], e[j])) for j in range(pool)]
            assert idx[i] == int(np.argmin(sims))
            assert cos[i] == pytest.approx(min(sims), abs=1e-12)


def test_mid_and_rand_negatives_follow_negfacediff() -> None:
    e = unit(np.random.default_rng(3).standard_normal((31, 512)))
    mid, _ = select_negatives(e, "mid", device="cpu")
    rand, _ = select_negatives(e, "rand", device="cpu")
    for i in range(31):
        sims = [float(np.dot(e[i], e[j])) for j in range(31)]  # the pool includes the identity itself
        assert mid[i] == sorted(range(31), key=lambda j: sims[j])[31 // 2]
    assert rand.tolist() == [30] + list(range(30))  # previous identity; the first takes the last


# -------------------------------------------------------------------------------------------- CLI
def test_cli_identities_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "ids"
    code, text = run_cli("identities", "--source", "uniform", "-n", "120", "--max-similarity", "0.3", "--seed", "5",
                         "--negatives", "far", "--out", str(out), "--device", "cpu")
    assert code == 0, text
    assert "kept 120 identities" in text
    e = np.load(out / "identities.npy", allow_pickle=False)
    meta = json.loads((out / "identities.json").read_text())
    assert e.shape == (120, 512) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e.astype(np.float64), axis=1), 1.0, atol=1e-6)
    assert meta["source"] == "uniform" and meta["seed"] == 5 and meta["max_similarity"] == 0.3
    assert meta["counts"] == {"candidates": 120, "kept": 120, "rejected": 0}
    g = e.astype(np.float64) @ e.astype(np.float64).T
    assert meta["negatives"]["method"] == "far" and meta["negatives"]["index"] == g.argmin(axis=1).tolist()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries
    again = tmp_path / "again"
    run_cli("identities", "-n", "120", "--seed", "5", "--out", str(again), "--device", "cpu")
    assert (again / "identities.npy").read_bytes() == (out / "identities.npy").read_bytes()


def test_cli_identities_reads_its_config_section(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"identities:\n  n: 10\n  seed: 3\n  negatives: rand\n  out: {tmp_path / 'o'}\n")
    code, text = run_cli("identities", "--config", str(cfg), "--device", "cpu")
    assert code == 0, text
    meta = json.loads((tmp_path / "o" / "identities.json").read_text())
    assert meta["seed"] == 3 and meta["negatives"]["index"] == [9] + list(range(9))
    cfg.write_text("identities:\n  n_identities: 10\n")
    code, text = run_cli("identities", "--config", str(cfg))
    assert code == 2 and "unknown key 'identities.n_identities'" in text


def test_uniform_without_a_count_is_a_config_error(tmp_path: Path) -> None:
    code, text = run_cli("identities", "--out", str(tmp_path / "o"))
    assert code == 2 and "-n" in text
