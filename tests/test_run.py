"""`frbench run` end to end on the plumbing demo: every stage, skip when finished, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fr_bench.cache import RunLock
from fr_bench.cli import cli

pytestmark = pytest.mark.slow  # end-to-end: deselected by make test-fast (-m 'not slow')

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
STAGES = ("identities", "generate", "align", "train", "eval", "metrics")


def frbench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FRBENCH_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "fr_bench.cli", *args], capture_output=True, text=True, env=env, timeout=900)


def stage_dir(work: Path, stage: str) -> Path:
    (d,) = (work / "runs" / "demo").glob(f"{stage}-*")
    return d


def results(work: Path) -> dict:
    ev = json.loads((stage_dir(work, "eval") / "eval.json").read_text())
    import torch

    weights = torch.load(stage_dir(work, "train") / "model.pt", weights_only=True)
    return {"weights": {k: v.numpy().tobytes() for k, v in weights.items()},
            "eval": {k: {m: v for m, v in r.items() if m != "seconds"} for k, r in ev["benchmarks"].items()},
            "average": ev["average"]}


@pytest.fixture(scope="module")
def demo_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("demo")
    proc = frbench("--workdir", str(work), "run", str(DEMO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def test_demo_runs_every_stage_end_to_end(demo_work: Path) -> None:
    for stage in STAGES:
        assert (stage_dir(demo_work, stage) / "DONE.json").is_file(), stage
    ev = json.loads((stage_dir(demo_work, "eval") / "eval.json").read_text())
    assert set(ev["benchmarks"]) == {"lfw", "cfp_fp", "cplfw", "agedb_30", "calfw"} and ev["average"] is not None
    sep = json.loads((stage_dir(demo_work, "metrics") / "metrics.json").read_text())["separability"]
    assert sep["genuine_pairs"] == 8 * 15 and sep["impostor_pairs"] == 28 * 36
    assert len(list((stage_dir(demo_work, "generate") / "dataset").glob("*/*.png"))) == 48


def test_second_run_skips_every_stage(demo_work: Path) -> None:
    before = {s: (stage_dir(demo_work, s) / "DONE.json").stat().st_mtime_ns for s in STAGES}
    proc = frbench("--workdir", str(demo_work), "run", str(DEMO), "--no-track")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("(cached)") == len(STAGES)
    assert {s: (stage_dir(demo_work, s) / "DONE.json").stat().st_mtime_ns for s in STAGES} == before


def test_run_logs_a_parent_run_with_one_child_per_stage(demo_work: Path) -> None:
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{demo_work.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("frbench")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("frbench.stage") == "run"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["frbench.stage"] for r in children) == sorted(STAGES)
    assert "verification/avg" in parent.data.metrics and "separability/eer" in parent.data.metrics
    assert all(f"frbench.hash.{s}" in parent.data.tags for s in STAGES)
    assert "config.json" in [a.path for a in client.list_artifacts(parent.info.run_id)]


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["--workdir", str(tmp_path), "run", str(DEMO), "--dry-run"], obj={})
    assert res.exit_code == 0, res.output
    assert all(s in res.output for s in STAGES)
    assert not (tmp_path / "runs").exists()


def test_kill_during_train_then_rerun_gives_identical_results_and_marks_the_killed_runs(demo_work: Path,
                                                                                       tmp_path: Path) -> None:
    from fr_bench.tracking import search_runs

    work = tmp_path / "killed"
    env = {**os.environ, "FRBENCH_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fr_bench.cli", "--workdir", str(work), "run", str(DEMO)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    killed_mid_train = False
    while time.time() < deadline and proc.poll() is None:
        ckpts = list((work / "runs" / "demo").glob("train-*/checkpoint.json"))
        if ckpts:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_mid_train = not (ckpts[0].parent / "DONE.json").exists()
            break
        time.sleep(0.05)
    assert killed_mid_train, "the run was not caught between its first checkpoint and the end of training"
    uri = f"sqlite:///{work.resolve() / 'mlflow.db'}"
    left = {r["run_id"] for r in search_runs(uri) if r["status"] == "RUNNING"}
    assert left  # what kill -9 leaves behind: the parent and the train child still RUNNING
    again = frbench("--workdir", str(work), "run", str(DEMO))
    assert again.returncode == 0, again.stderr[-2000:]
    assert results(work) == results(demo_work)
    runs = search_runs(uri)
    assert {r["status"] for r in runs if r["run_id"] in left} == {"KILLED"}
    (parent,) = [r for r in runs if r["tags"].get("frbench.stage") == "run" and r["run_id"] not in left]
    children = [r for r in runs if r["tags"].get("mlflow.parentRunId") == parent["run_id"]]
    assert parent["status"] == "FINISHED" and sorted(c["tags"]["frbench.stage"] for c in children) == sorted(STAGES)
    assert {c["status"] for c in children} == {"FINISHED"}


# ------------------------------------------------------------------------------------ bad input
def _config(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(body)
    return p


def test_unregistered_generator_lists_the_registered_ones(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "demo: true\nidentities: {n: 2}\ngenerate: {generator: stylegan9, per_identity: 2}\n")
    res = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "w"), "run", str(cfg), "--no-track"], obj={})
    assert res.exit_code == 2
    assert "unknown generator 'stylegan9'; registered: " in res.output and "idiff-face" in res.output
    assert "Traceback" not in res.output


def test_missing_stage_input_is_named(tmp_path: Path) -> None:
    cfg = _config(tmp_path, f"inputs: {{dataset: {tmp_path / 'nowhere'}}}\ntrain: {{recipe: idiff-face}}\n")
    res = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "w"), "run", str(cfg), "--no-track"], obj={})
    assert res.exit_code == 2
    assert f"error: {tmp_path / 'nowhere'}: inputs.dataset does not exist" in res.output


def test_stage_without_its_input_stage_is_a_config_error(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "train: {recipe: idiff-face}\n")
    res = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "w"), "run", str(cfg), "--no-track"], obj={})
    assert res.exit_code == 2 and "stage 'train' needs 'align'" in res.output


def test_second_concurrent_run_on_the_same_run_dir_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "name: busy\nidentities: {n: 2, source: uniform}\n")
    with RunLock(tmp_path / "w" / "runs" / "busy"):
        res = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "w"), "run", str(cfg), "--no-track"], obj={})
    assert res.exit_code == 2
    assert f"pid {os.getpid()}) is using this run directory" in res.output


def test_identity_consistency_runs_inside_run_with_the_contexts_generation_used(tmp_path: Path) -> None:
    import torch

    from fr_bench.models.iresnet import iresnet

    torch.manual_seed(0)
    fr = tmp_path / "fr512.pt"  # an FR model in the contexts' 512-d space (the demo's own model is 64-d)
    torch.save(iresnet("r18", num_features=512).state_dict(), fr)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""name: consistency
demo: true
runtime: {{device: cpu, batch_size: 16, workers: 1}}
identities: {{source: uniform, n: 3, max_similarity: 0.3}}
generate: {{generator: idiff-face, per_identity: 2, steps: 2, batch_size: 6}}
align: {{detector: none}}
metrics: {{fr_model: {fr}, identities: 3, per_identity: 2, lpips_identities: 2}}
""")
    res = CliRunner().invoke(cli, ["run", str(cfg), "--workdir", str(tmp_path / "w"), "--no-track"], obj={})
    assert res.exit_code == 0, res.output
    doc = json.loads(next((tmp_path / "w" / "runs" / "consistency").glob("metrics-*/metrics.json")).read_text())
    ids = next((tmp_path / "w" / "runs" / "consistency").glob("identities-*/identities.npy"))
    assert doc["consistency"]["contexts"] == str(ids.resolve()) and doc["consistency"]["images_without_context"] == 0
    assert "consistency" not in doc["not_computed"]
