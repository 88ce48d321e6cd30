"""`frbench eval` end to end: table, JSON, MLflow, and one-line errors for bad input."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import face_like_images, jpeg_bytes
from fr_bench.cli import cli
from fr_bench.data.binfile import load_pack, write_pack
from fr_bench.embed import l2_normalize
from fr_bench.models import load_fr_model
from test_verification_protocol import reference_accuracy


def run(args: list[str]):
    return CliRunner().invoke(cli, args, obj={}, catch_exceptions=False)


@pytest.fixture()
def five_dir(tmp_path: Path, bin_dir: Path) -> Path:
    d = tmp_path / "five"
    d.mkdir()
    for name in ("lfw", "cfp_fp", "cplfw", "agedb_30", "calfw"):
        shutil.copy(bin_dir / ("lfw.bin" if name != "cfp_fp" else "cfp_fp.bin"), d / f"{name}.bin")
    return d


@pytest.mark.slow
def test_json_has_documented_schema_and_lists_absent_benchmarks(tmp_path: Path, tiny_iresnet_path: Path, bin_dir: Path) -> None:
    out = tmp_path / "r.json"
    res = run(["--workdir", str(tmp_path / "w"), "eval", "--model", str(tiny_iresnet_path), "--data-dir", str(bin_dir),
               "--output", str(out), "--no-track", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert set(doc["benchmarks"]) == {"lfw", "cfp_fp"}
    lfw = doc["benchmarks"]["lfw"]
    assert 0.0 <= lfw["accuracy"] <= 1.0 and lfw["pairs"] == 40 and "accuracy_std" in lfw and "threshold" in lfw
    assert doc["benchmarks"]["cfp_fp"]["pairs"] == 30
    assert doc["average"] is None and set(doc["absent"]) == {"cplfw", "agedb_30", "calfw"}
    assert "cplfw" in res.output and "lfw" in res.output


def test_accuracy_equals_reference_on_the_models_embeddings(tmp_path: Path, tiny_iresnet_path: Path, bin_dir: Path) -> None:
    out = tmp_path / "r.json"
    res = run(["eval", "--model", str(tiny_iresnet_path), "--data-dir", str(bin_dir), "--benchmarks", "lfw",
               "--output", str(out), "--no-track", "--device", "cpu", "--batch-size", "7"])
    assert res.exit_code == 0, res.output
    pack = load_pack(bin_dir / "lfw.bin")
    emb = load_fr_model(tiny_iresnet_path, device="cpu")
    raw_orig = emb.embed(pack.images).astype(np.float64)
    raw_flip = emb.embed(np.ascontiguousarray(pack.images[:, :, ::-1])).astype(np.float64)
    ref_mean, ref_std = reference_accuracy(l2_normalize(raw_orig + raw_flip), pack.issame)
    doc = json.loads(out.read_text())["benchmarks"]["lfw"]
    assert doc["accuracy"] == pytest.approx(ref_mean, abs=1e-12)
    assert doc["accuracy_std"] == pytest.approx(ref_std, abs=1e-12)


@pytest.mark.slow
def test_five_benchmarks_give_the_average(tmp_path: Path, tiny_onnx_path: Path, five_dir: Path) -> None:
    out = tmp_path / "r.json"
    res = run(["eval", "--model", str(tiny_onnx_path), "--data-dir", str(five_dir), "--output", str(out), "--no-track"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    accs = [doc["benchmarks"][n]["accuracy"] for n in ("lfw", "cfp_fp", "cplfw", "agedb_30", "calfw")]
    assert doc["average"] == pytest.approx(sum(accs) / 5)
    assert "Avg (5)" in res.output


@pytest.mark.slow
def test_logs_params_metrics_and_json_to_mlflow(tmp_path: Path, tiny_iresnet_path: Path, bin_dir: Path) -> None:
    import mlflow

    work = tmp_path / "w"
    res = run(["--workdir", str(work), "eval", "--model", str(tiny_iresnet_path), "--data-dir", str(bin_dir),
               "--benchmarks", "lfw", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{work.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("frbench")
    (run_info,) = client.search_runs([exp.experiment_id])
    assert 0 <= run_info.data.metrics["lfw/accuracy"] <= 1
    assert len(run_info.data.params["model_sha256"]) == 64 and len(run_info.data.params["lfw_sha256"]) == 64
    assert [a.path for a in client.list_artifacts(run_info.info.run_id)] == ["eval.json"]


@pytest.mark.slow
def test_unreachable_tracking_server_warns_once_and_still_writes(tmp_path: Path, tiny_iresnet_path: Path, bin_dir: Path) -> None:
    out = tmp_path / "r.json"
    res = run(["eval", "--model", str(tiny_iresnet_path), "--data-dir", str(bin_dir), "--benchmarks", "lfw",
               "--output", str(out), "--tracking-uri", "http://127.0.0.1:9", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert res.output.count("warning: tracking disabled") == 1
    assert json.loads(out.read_text())["benchmarks"]["lfw"]["pairs"] == 40


@pytest.mark.slow
def test_no_track_creates_no_store(tmp_path: Path, tiny_iresnet_path: Path, bin_dir: Path) -> None:
    work = tmp_path / "w"
    res = run(["--workdir", str(work), "eval", "--model", str(tiny_iresnet_path), "--data-dir", str(bin_dir),
               "--benchmarks", "lfw", "--no-track", "--device", "cpu"])
    assert res.exit_code == 0
    assert not (work / "mlflow.db").exists()


# ----------------------------------------------------------------------------------- bad input
def _evil_bin(d: Path) -> Path:
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'pwned'}",))

    (d / "lfw.bin").write_bytes(pickle.dumps(([Evil(), b""], [True])))
    return d


def _truncated_bin(d: Path, src: Path) -> Path:
    data = (src / "lfw.bin").read_bytes()
    (d / "lfw.bin").write_bytes(data[: len(data) // 3])
    return d


def _corrupt_jpeg_bin(d: Path) -> Path:
    imgs = [jpeg_bytes(i) for i in face_like_images(8)]
    imgs[5] = b"\xff\xd8garbage"
    write_pack(d / "lfw.bin", imgs, [True, False, True, False])
    return d


def _mismatch_bin(d: Path) -> Path:
    write_pack(d / "lfw.bin", [jpeg_bytes(i) for i in face_like_images(8)], [True, False, True])
    return d


@pytest.mark.parametrize(
    "case,expect",
    [
        ("evil", "unsafe pickle"),
        ("truncated", "corrupt or truncated"),
        ("corrupt_jpeg", "image 5 (pair 2) is not a decodable image"),
        ("mismatch", "8 images but 3 labels"),
    ],
)
def test_bad_bin_is_one_line_naming_the_file(case: str, expect: str, tmp_path: Path, tiny_iresnet_path: Path, bin_dir: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    {"evil": lambda: _evil_bin(d), "truncated": lambda: _truncated_bin(d, bin_dir),
     "corrupt_jpeg": lambda: _corrupt_jpeg_bin(d), "mismatch": lambda: _mismatch_bin(d)}[case]()
    out = tmp_path / "r.json"
    res = run(["eval", "--model", str(tiny_iresnet_path), "--data-dir", str(d), "--benchmarks", "lfw",
               "--output", str(out), "--no-track", "--device", "cpu"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and str(d / "lfw.bin") in errors[0] and expect in errors[0]
    assert "Traceback" not in res.output
    assert not out.exists() and not (d / "pwned").exists()


def test_bad_model_files_are_one_line(tmp_path: Path, bin_dir: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\x00\x01not a model")
    res = run(["eval", "--model", str(bad), "--data-dir", str(bin_dir), "--no-track"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"error: {bad}: not an ONNX model or a PyTorch state dict" in res.output


def test_missing_data_dir_is_one_line(tmp_path: Path, tiny_iresnet_path: Path) -> None:
    res = run(["eval", "--model", str(tiny_iresnet_path), "--data-dir", str(tmp_path / "nowhere"), "--no-track"])
    assert res.exit_code == 2
    assert f"error: {tmp_path / 'nowhere'}: data directory not found" in res.output


def test_unknown_benchmark_name(tmp_path: Path, tiny_iresnet_path: Path, bin_dir: Path) -> None:
    res = run(["eval", "--model", str(tiny_iresnet_path), "--data-dir", str(bin_dir), "--benchmarks", "lfw,lfww", "--no-track"])
    assert res.exit_code == 2 and "unknown benchmark 'lfww'" in res.output


def test_debug_shows_the_traceback(tmp_path: Path, bin_dir: Path) -> None:
    res = CliRunner().invoke(cli, ["--debug", "eval", "--model", str(tmp_path / "x.onnx"), "--data-dir", str(bin_dir)], obj={})
    assert res.exit_code != 0 and res.exception is not None


def test_config_typo_names_key_and_suggestion(tmp_path: Path, tiny_iresnet_path: Path, bin_dir: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("eval:\n  model: m.onnx\n  benchmark: [lfw]\n")
    res = run(["eval", "--config", str(cfg), "--no-track"])
    assert res.exit_code == 2
    assert f"{cfg}: unknown key 'eval.benchmark' (did you mean 'benchmarks'?)" in res.output


@pytest.mark.slow
def test_config_supplies_options(tmp_path: Path, tiny_iresnet_path: Path, bin_dir: Path) -> None:
    out = tmp_path / "r.json"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"eval:\n  model: {tiny_iresnet_path}\n  data_dir: {bin_dir}\n  benchmarks: [cfp_fp]\n  output: {out}\n"
                   "runtime:\n  device: cpu\ntracking:\n  enabled: false\n")
    res = run(["eval", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert list(json.loads(out.read_text())["benchmarks"]) == ["cfp_fp"]


@pytest.mark.slow
def test_eval_verb_and_the_run_eval_stage_give_identical_json_and_params(tmp_path: Path, tiny_onnx_path: Path,
                                                                         bin_dir: Path) -> None:
    from fr_bench.tracking import search_runs

    work = tmp_path / "w"
    res = run(["--workdir", str(work), "eval", "--model", str(tiny_onnx_path), "--data-dir", str(bin_dir),
               "--benchmarks", "lfw,cfp_fp", "--device", "cpu", "--dtype", "fp32", "--batch-size", "32",
               "--output", str(tmp_path / "verb.json"), "--experiment", "verb"])
    assert res.exit_code == 0, res.output
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""name: stage
runtime: {{device: cpu, dtype: fp32, batch_size: 32}}
inputs: {{model: {tiny_onnx_path}}}
eval: {{data_dir: {bin_dir}, benchmarks: [lfw, cfp_fp]}}
""")
    res = run(["--workdir", str(work), "run", str(cfg), "--experiment", "stage"])
    assert res.exit_code == 0, res.output
    stage_json = next((work / "runs" / "stage").glob("eval-*/eval.json"))

    def comparable(doc: dict) -> dict:  # everything but where artefacts went and how long it took
        for bench in doc["benchmarks"].values():
            bench.pop("artifacts", None)
            bench.pop("seconds")
        return doc

    assert comparable(json.loads(stage_json.read_text())) == comparable(json.loads((tmp_path / "verb.json").read_text()))
    uri = f"sqlite:///{work.resolve() / 'mlflow.db'}"
    (verb,) = search_runs(uri, "verb")
    child = next(r for r in search_runs(uri, "stage") if r["tags"].get("frbench.stage") == "eval")
    assert child["params"] == verb["params"] and len(verb["params"]["model_sha256"]) == 64
