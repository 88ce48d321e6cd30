"""IJB-C / IJB-B 1:1 verification: equality with insightface eval_ijbc.py, the crop cache, the CLI, bad input."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import roc_curve

from _ijb_reference import reference_crop, reference_scores, reference_src, reference_tar, run_reference
from _ijb_tree import meta_file, tiny_iresnet, write_ijb_tree
from fr_bench.cli import cli
from fr_bench.data import ijb_cache
from fr_bench.data.ijb_cache import REFERENCE_DST, cache_key, fill_cache, open_cache
from fr_bench.data.ijb_meta import read_ijb_meta
from fr_bench.models.torch_model import TorchEmbedder
from fr_bench.protocols import get_benchmark
from fr_bench.protocols import ijb as ijb_mod
from fr_bench.protocols.ijb import (
    image_features,
    pair_scores,
    reference_roc,
    roc_counts,
    tar_at_far_nearest,
    tar_at_far_strict,
    template_features,
)

FAR_KEYS = ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """~250 loose crops, 64 templates over multi-frame media, 2016 pairs (96 genuine). Read-only."""
    return write_ijb_tree(tmp_path_factory.mktemp("ijb"), "ijbc", seed=0)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_iresnet()


@pytest.fixture(scope="module")
def embedder(model: torch.nn.Module) -> TorchEmbedder:
    return TorchEmbedder(model, "tiny.pt", "tiny", 32, device="cpu", batch_size=64)


@pytest.fixture(scope="module")
def reference(tree: dict, model: torch.nn.Module) -> dict:
    with torch.inference_mode():
        return run_reference(str(tree["root"]), "IJBC", lambda x: model(x).numpy())


@pytest.fixture(scope="module")
def built(tree: dict, embedder: TorchEmbedder, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """frbench's pipeline on the tree: evaluate() result, the cache, image and template features."""
    work = tmp_path_factory.mktemp("work")
    bench = get_benchmark("ijbc", tree["root"].parent)
    result = bench.evaluate(embedder, workdir=work)
    meta = read_ijb_meta(tree["root"], "ijbc")
    cache = open_cache(work / "cache" / "ijb", cache_key(meta.landmark_sha256), len(meta.names))
    paths = [str(meta.image_dir / n) for n in meta.names]
    feats = image_features(embedder, cache, paths, meta.landmarks)
    tfeats, uniq = template_features(feats, meta.faceness, meta.row_image, meta.templates, meta.medias)
    return {"result": result, "work": work, "meta": meta, "cache": cache, "feats": feats, "tfeats": tfeats, "uniq": uniq}


@pytest.fixture(scope="module")
def onnx_model(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 112, 112), str(path), input_names=["input.1"], output_names=["fc1"],
                      dynamic_axes={"input.1": {0: "batch"}, "fc1": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def copy_tree(tree: dict, dest: Path) -> Path:
    """A writable copy of the tree's data dir; returns its IJBC root."""
    shutil.copytree(tree["root"], dest / "IJBC")
    return dest / "IJBC"


def run_cli(args: list[str]):
    return CliRunner().invoke(cli, args, obj={}, catch_exceptions=False)


# ------------------------------------------------------------------------ equality with eval_ijbc
def test_aligned_crops_are_bitwise_the_reference_crops(tree: dict, built: dict) -> None:
    meta, crops = built["meta"], built["cache"].crops
    for i, name in enumerate(meta.names):
        img = cv2.imread(str(meta.image_dir / name))
        np.testing.assert_array_equal(crops[i], reference_crop(img, meta.landmarks[i]), err_msg=name)


def test_alignment_uses_eval_ijbc_points_not_face_align_arcface_dst() -> None:
    from insightface.utils.face_align import arcface_dst

    np.testing.assert_array_equal(REFERENCE_DST, reference_src())
    # one coordinate is a float32 ulp away in insightface's library template: close, not equal
    assert np.abs(REFERENCE_DST - arcface_dst).max() < 1e-5 and (REFERENCE_DST != arcface_dst).sum() == 1


def test_image_features_equal_reference_flip_sum_times_faceness(built: dict, reference: dict) -> None:
    ours = built["feats"].astype(np.float64) * built["meta"].faceness[:, None]
    np.testing.assert_allclose(ours, reference["image_feats"], rtol=1e-5, atol=1e-5)


def test_template_features_equal_reference_to_1e_6(built: dict, reference: dict) -> None:
    np.testing.assert_array_equal(built["uniq"], reference["unique_templates"])
    assert np.abs(built["tfeats"] - reference["template_feats"]).max() < 1e-6


def test_tar_at_far_equals_reference(tree: dict, built: dict, reference: dict) -> None:
    res = built["result"]
    assert list(res["tar_at_far"]) == FAR_KEYS
    assert res["tar_at_far"] == reference["tar"]
    assert res["auc"] == pytest.approx(reference["auc"], abs=1e-12)
    assert (res["templates"], res["pairs"], res["images"], res["genuine"]) == (64, tree["pairs"], tree["images"], tree["genuine"])
    # not degenerate: TAR varies across the targets, and the two rules disagree somewhere
    assert len(set(res["tar_at_far"].values())) >= 3 and res["tar_at_far"] != res["tar_at_far_strict"]


@pytest.mark.parametrize("method", ["gram", "gather"])
def test_pair_scores_equal_reference_dot_products(built: dict, method: str) -> None:
    meta, uniq, tfeats = built["meta"], built["uniq"], built["tfeats"]
    ours = pair_scores(tfeats, np.searchsorted(uniq, meta.t1), np.searchsorted(uniq, meta.t2), device="cpu", method=method,
                       budget_bytes=4096)  # tiny blocks: many of them
    np.testing.assert_allclose(ours, reference_scores(tfeats, uniq, meta.t1, meta.t2), rtol=0, atol=1e-13)


def test_media_are_averaged_then_summed_per_template() -> None:
    feats = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=np.float32)
    # template 7: media 1 (two frames, mean [2, 0]) + media 2 ([0, 1]) → [2, 1]; template 9: one image
    tf, uniq = template_features(feats, np.ones(4, np.float32), np.arange(4), np.array([7, 7, 7, 9]), np.array([1, 1, 2, 1]))
    np.testing.assert_array_equal(uniq, [7, 9])
    np.testing.assert_allclose(tf, [[2 / np.sqrt(5), 1 / np.sqrt(5)], [np.sqrt(0.5), np.sqrt(0.5)]])


def test_template_pooling_is_independent_of_row_order_and_block_size(built: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, feats = built["meta"], built["feats"]
    perm = np.random.default_rng(0).permutation(len(meta.templates))
    monkeypatch.setattr(ijb_mod, "POOL_ELEMENTS", 7 * feats.shape[1])  # many small pooling blocks
    tf, _ = template_features(feats, meta.faceness, meta.row_image[perm], meta.templates[perm], meta.medias[perm])
    np.testing.assert_allclose(tf, built["tfeats"], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------- ROC rules
def _tied_scores(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.2).astype(int)
    scores = np.round(rng.normal(labels * 1.2, 1.0), 1)  # coarse rounding: many ties, collinear runs
    return labels, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_counts_reproduce_sklearn_roc_curve_exactly(seed: int) -> None:
    labels, scores = _tied_scores(seed)
    fps, tps, thr = roc_counts(labels, scores, device="cpu")
    for got, want in zip(reference_roc(fps, tps, thr), roc_curve(labels, scores)):
        np.testing.assert_array_equal(got, want)
    full = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_array_equal(np.r_[0, fps] / fps[-1], full[0])
    np.testing.assert_array_equal(np.r_[0, tps] / tps[-1], full[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nearest_rule_equals_the_reference_loop(seed: int) -> None:
    labels, scores = _tied_scores(seed)
    fpr, tpr, _ = reference_roc(*roc_counts(labels, scores, device="cpu"))
    assert tar_at_far_nearest(fpr, tpr) == reference_tar(labels, scores)[0]


def test_nearest_rule_takes_larger_fpr_when_equally_near_and_larger_tpr_at_equal_fpr() -> None:
    # 5 impostors: FPR moves in steps of 0.2; genuine scores interleave so the curve has vertical runs
    labels = np.array([1, 1, 0, 1, 1, 0, 0, 1, 0, 0])
    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    fpr, tpr, _ = reference_roc(*roc_counts(labels, scores, device="cpu"))
    tar = tar_at_far_nearest(fpr, tpr, [0.1, 0.2])
    # FAR 0.1 is 0.1 from FPR 0 (TPR 0.4) and from FPR 0.2 (TPR 0.8): the reference walks from high FPR
    assert tar == {"0.1": 0.8, "0.2": 0.8}
    assert reference_tar(labels, scores)[0]["0.1"] == 0.8


def _strict_brute_force(labels: np.ndarray, scores: np.ndarray, far: float) -> float:
    gen, imp = scores[labels == 1], scores[labels == 0]
    best = 0.0
    for t in np.r_[np.unique(scores), np.inf]:  # accept iff score >= t
        if np.mean(imp >= t) <= far:
            best = max(best, float(np.mean(gen >= t)))
    return best


@pytest.mark.parametrize("seed", [0, 1])
def test_strict_rule_is_highest_tar_with_far_at_most_target(seed: int) -> None:
    labels, scores = _tied_scores(seed, n=800)
    n_imp = int((labels == 0).sum())
    fars = [0.0, 1 / n_imp, 2 / n_imp, 0.5 / n_imp, 1e-3, 1e-2, 37 / n_imp, 0.1, 0.5]  # exact grid points catch < vs <=
    fps, tps, _ = roc_counts(labels, scores, device="cpu")
    got = tar_at_far_strict(fps, tps, fars)
    assert got == {str(f): _strict_brute_force(labels, scores, f) for f in fars}


# --------------------------------------------------------------------------------------- cache
def test_warm_run_reads_no_image_and_is_shared_across_models(tree: dict, built: dict, tmp_path: Path) -> None:
    root = copy_tree(tree, tmp_path)
    bench = get_benchmark("ijbc", tmp_path)
    other = TorchEmbedder(tiny_iresnet(seed=1), "other.pt", "tiny", 32, device="cpu")
    first = bench.evaluate(other, workdir=built["work"])  # the module's cache: built by another model
    for p in (root / "loose_crop").iterdir():
        p.write_bytes(b"not a jpeg")
    again = bench.evaluate(other, workdir=built["work"])
    assert first["cache"]["status"] == again["cache"]["status"] == "hit" and again["cache"]["aligned_now"] == 0
    assert again["tar_at_far"] == first["tar_at_far"]


def _slow_build_script(work: Path, root: Path) -> str:
    return f"""
import time
from fr_bench.data import ijb_cache
from fr_bench.data.ijb_meta import read_ijb_meta
slow = ijb_cache.align_crop
def align_crop(img, lmk):
    time.sleep(0.02)
    return slow(img, lmk)
ijb_cache.align_crop = align_crop
meta = read_ijb_meta({str(root)!r}, "ijbc")
cache = ijb_cache.open_cache({str(work)!r}, "k", len(meta.names), chunk=16)
for _ in ijb_cache.fill_cache(cache, [str(meta.image_dir / n) for n in meta.names], meta.landmarks, workers=1):
    pass
"""


def test_killed_build_resumes_where_it_stopped(tree: dict, built: dict, tmp_path: Path) -> None:
    root = tree["root"]
    proc = subprocess.Popen([sys.executable, "-c", _slow_build_script(tmp_path, root)], cwd=tmp_path)
    done_file = tmp_path / "k" / "done.npy"
    deadline = time.time() + 60
    while time.time() < deadline:
        if done_file.exists() and np.load(done_file).sum() >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    meta = built["meta"]
    cache = open_cache(tmp_path, "k", len(meta.names), chunk=16)
    done_before = int(cache.done.sum())
    assert 3 <= done_before < cache.n_chunks
    aligned: list[int] = []
    chunks = list(fill_cache(cache, [str(meta.image_dir / n) for n in meta.names], meta.landmarks, workers=2,
                             progress=aligned.append))
    assert sorted(chunks) == list(range(cache.n_chunks)) and cache.complete
    assert len(aligned) == cache.n_chunks - done_before  # only the chunks the killed run had not finished
    np.testing.assert_array_equal(np.asarray(cache.crops), np.asarray(built["cache"].crops))


def test_bad_image_stops_the_build_and_the_fixed_rerun_continues(tree: dict, built: dict, tmp_path: Path) -> None:
    root = copy_tree(tree, tmp_path / "data")
    meta = built["meta"]
    victim = int(meta.names.tolist().index("200.jpg"))
    (root / "loose_crop" / "200.jpg").unlink()
    cache = open_cache(tmp_path / "c", "k", len(meta.names), chunk=16)
    paths = [str(root / "loose_crop" / n) for n in meta.names]
    with pytest.raises(Exception, match="200.jpg: image not found"):
        list(fill_cache(cache, paths, meta.landmarks, workers=1))
    done = np.load(tmp_path / "c" / "k" / "done.npy")
    assert done.sum() >= 1 and not done[victim // 16]
    shutil.copy(tree["root"] / "loose_crop" / "200.jpg", root / "loose_crop" / "200.jpg")
    aligned: list[int] = []
    list(fill_cache(open_cache(tmp_path / "c", "k", len(meta.names)), paths, meta.landmarks, workers=1, progress=aligned.append))
    assert len(aligned) == int((~done).sum())
    np.testing.assert_array_equal(np.asarray(open_cache(tmp_path / "c", "k", len(meta.names)).crops), np.asarray(built["cache"].crops))


def test_process_workers_build_the_same_crops(built: dict, tmp_path: Path) -> None:
    meta = built["meta"]
    cache = open_cache(tmp_path, "k", len(meta.names), chunk=64)
    list(fill_cache(cache, [str(meta.image_dir / n) for n in meta.names], meta.landmarks, workers=2, processes=True))
    np.testing.assert_array_equal(np.asarray(cache.crops), np.asarray(built["cache"].crops))


def test_landmark_rows_are_matched_to_images_by_name(tree: dict, built: dict, embedder: TorchEmbedder, tmp_path: Path) -> None:
    root = copy_tree(tree, tmp_path)
    lmk = meta_file(root, "landmarks")
    lines = lmk.read_text().splitlines()
    order = np.random.default_rng(1).permutation(len(lines))
    lmk.write_text("\n".join(lines[i] for i in order) + "\n")
    res = get_benchmark("ijbc", tmp_path).evaluate(embedder, workdir=tmp_path / "w")
    assert res["tar_at_far"] == built["result"]["tar_at_far"] and res["auc"] == pytest.approx(built["result"]["auc"], abs=1e-12)


# ----------------------------------------------------------------------------------------- CLI
def test_cli_scores_ijbc_beside_bin_benchmarks_and_logs_to_mlflow(tree: dict, model: torch.nn.Module, onnx_model: Path,
                                                                  bin_dir: Path, tmp_path: Path) -> None:
    import mlflow
    import onnxruntime as ort

    data = tmp_path / "data"
    copy_tree(tree, data)
    shutil.copy(bin_dir / "lfw.bin", data / "lfw.bin")
    out, work = tmp_path / "r.json", tmp_path / "w"
    res = run_cli(["--workdir", str(work), "eval", "--model", str(onnx_model), "--data-dir", str(data),
                   "--benchmarks", "lfw,ijbc", "--output", str(out), "--batch-size", "50"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    ijbc = doc["benchmarks"]["ijbc"]
    assert set(doc["benchmarks"]) == {"lfw", "ijbc"} and doc["benchmarks"]["lfw"]["pairs"] == 40
    assert list(ijbc["tar_at_far"]) == FAR_KEYS and list(ijbc["tar_at_far_strict"]) == FAR_KEYS
    assert (ijbc["templates"], ijbc["pairs"], ijbc["images"]) == (64, tree["pairs"], tree["images"])
    assert "IJBC 1:1 TAR (%) at FAR" in res.output and "Verification accuracy" in res.output

    sess = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    ref = run_reference(str(data / "IJBC"), "IJBC", lambda x: sess.run(None, {"input.1": x.numpy()})[0])
    assert ijbc["tar_at_far"] == ref["tar"]

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{work.resolve() / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("frbench").experiment_id])
    metrics = run.data.metrics
    assert metrics["ijbc/tar_far_1e-4"] == ijbc["tar_at_far"]["0.0001"]
    assert metrics["ijbc/tar_far_1e-5"] == ijbc["tar_at_far"]["1e-05"]
    assert metrics["ijbc/tar_far_strict_1e-2"] == ijbc["tar_at_far_strict"]["0.01"] and "lfw/accuracy" in metrics
    png = Path(ijbc["artifacts"][0])
    assert png.suffix == ".png" and png.read_bytes()[:4] == b"\x89PNG"
    assert png.name in [a.path for a in client.list_artifacts(run.info.run_id)]


def _drop(root: Path, kind: str) -> str:
    meta_file(root, kind).unlink()
    return f"{meta_file(root, kind)}: file for benchmark 'ijbc' not found"


def _extra_field(root: Path, kind: str, line: int) -> str:
    p = meta_file(root, kind)
    lines = p.read_text().splitlines()
    lines[line - 1] += " 7"
    p.write_text("\n".join(lines) + "\n")
    n = {"tid_mid": 3, "pairs": 3, "landmarks": 12}[kind]
    return f"{p}: line {line}: expected {n} space-separated fields"


def _missing_field(root: Path, kind: str, line: int) -> str:
    p = meta_file(root, kind)
    lines = p.read_text().splitlines()
    lines[line - 1] = lines[line - 1].rsplit(" ", 1)[0]
    p.write_text("\n".join(lines) + "\n")
    n = {"tid_mid": 3, "pairs": 3, "landmarks": 12}[kind]
    return f"{p}: line {line}: expected {n} space-separated fields"


def _missing_image(root: Path) -> str:
    (root / "loose_crop" / "57.jpg").unlink()
    return f"{root / 'loose_crop' / '57.jpg'}: image not found (listed in {meta_file(root, 'landmarks')} line 57)"


def _unreadable_image(root: Path) -> str:
    (root / "loose_crop" / "58.jpg").write_bytes(b"\xff\xd8 truncated")
    return f"{root / 'loose_crop' / '58.jpg'}: cannot be decoded as an image (listed in {meta_file(root, 'landmarks')} line 58)"


def _unknown_landmark_row(root: Path) -> str:
    p = meta_file(root, "landmarks")
    n = len(p.read_text().splitlines())
    with open(p, "a") as f:
        f.write("9999.jpg 1 2 3 4 5 6 7 8 9 10 0.9\n")
    return f"{p}: line {n + 1}: landmark row for unknown image '9999.jpg'"


def _unknown_template(root: Path) -> str:
    p = meta_file(root, "pairs")
    lines = p.read_text().splitlines()
    lines[4] = "123456789 " + lines[4].split(" ", 1)[1]
    p.write_text("\n".join(lines) + "\n")
    return f"{p}: line 5: template 123456789 has no images in ijbc_face_tid_mid.txt"


BAD_INPUT = {
    "missing pair file": lambda r: _drop(r, "pairs"),
    "missing landmark file": lambda r: _drop(r, "landmarks"),
    "tid_mid row with 4 fields": lambda r: _extra_field(r, "tid_mid", 7),
    "pair row with 2 fields": lambda r: _missing_field(r, "pairs", 11),
    "landmark row with 13 fields": lambda r: _extra_field(r, "landmarks", 3),
    "listed image missing": _missing_image,
    "listed image unreadable": _unreadable_image,
    "landmark row for unknown image": _unknown_landmark_row,
    "pair with unknown template": _unknown_template,
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_naming_file_and_problem(case: str, tree: dict, onnx_model: Path, tmp_path: Path) -> None:
    root = copy_tree(tree, tmp_path / "data")
    expect = BAD_INPUT[case](root)
    out = tmp_path / "r.json"
    res = run_cli(["--workdir", str(tmp_path / "w"), "eval", "--model", str(onnx_model), "--data-dir", str(tmp_path / "data"),
                   "--benchmarks", "ijbc", "--output", str(out), "--no-track"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert res.exit_code == 2, res.output
    assert len(errors) == 1 and errors[0].startswith(f"error: {expect}"), res.output
    assert "Traceback" not in res.output and not out.exists()


def test_meta_parser_reports_non_numeric_fields_with_line(tree: dict, tmp_path: Path) -> None:
    root = copy_tree(tree, tmp_path)
    p = meta_file(root, "landmarks")
    lines = p.read_text().splitlines()
    parts = lines[8].split(" ")
    parts[4] = "nan"
    lines[8] = " ".join(parts)
    p.write_text("\n".join(lines) + "\n")
    from fr_bench.errors import InputError

    with pytest.raises(InputError, match=r"line 9: field 5 'nan' is not a finite number"):
        read_ijb_meta(root, "ijbc")


def test_headline_names_match_the_leaderboard(built: dict) -> None:
    head = get_benchmark("ijbc", Path(".")).headline(built["result"])
    assert head["ijbc/tar_far_1e-4"] == built["result"]["tar_at_far"]["0.0001"]
    assert {f"ijbc/tar_far_1e-{k}" for k in range(1, 7)} <= set(head)


def test_ijbb_reads_ijbb_prefixed_files(tmp_path: Path, embedder: TorchEmbedder) -> None:
    write_ijb_tree(tmp_path, "ijbb", subjects=4, templates_per_subject=2, seed=5)
    bench = get_benchmark("ijbb", tmp_path)
    assert all(p.exists() for p in bench.files()) and bench.files()[0].name == "ijbb_face_tid_mid.txt"
    res = bench.evaluate(embedder, workdir=tmp_path / "w")
    assert res["templates"] == 8 and res["pairs"] == 28 and res["genuine"] == 4


def test_workers_env_var_sets_the_pool_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRBENCH_IJB_WORKERS", "3")
    assert ijb_cache.default_workers() == 3
