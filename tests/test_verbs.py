"""Every CLI verb is a one-stage run of the executor behind `frbench run`: the same stage function and
hash, DONE.json provenance, the same locks and error path; generate shards from `run` as from the verb."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import invoke as run
from fr_bench.cache import RunLock
from fr_bench.config import load_config
from fr_bench.errors import FrBenchError
from fr_bench.generate import Shard
from fr_bench.pipeline import make_plan
from fr_bench.stages import STAGES

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def reached(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Each stage function replaced by one that records what it was given and stops with an error."""
    got: dict = {}
    for name, stage in list(STAGES.items()):
        def fake(ctx, name=name):
            got[name] = ctx
            raise FrBenchError(f"stage {name} reached")
        monkeypatch.setitem(STAGES, name, dataclasses.replace(stage, run=fake))
    return got


def _stopped_in(res, stage: str) -> None:
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1] == f"error: stage {stage} reached", res.output


def test_identities_verb_hands_its_options_to_the_identities_stage(tmp_path: Path, reached: dict) -> None:
    res = run("--workdir", tmp_path / "w", "identities", "-n", 5, "--max-similarity", 0.2, "--seed", 3,
              "--device", "cpu", "--out", tmp_path / "ids")
    _stopped_in(res, "identities")
    ctx = reached["identities"]
    assert (ctx.section.n, ctx.section.max_similarity, ctx.section.seed) == (5, 0.2, 3)
    assert ctx.cfg.runtime.device == "cpu" and ctx.out_dir == tmp_path / "ids" and ctx.inputs == {}


def test_no_filter_reaches_the_stage_as_no_threshold(tmp_path: Path, reached: dict) -> None:
    _stopped_in(run("identities", "-n", 5, "--no-filter", "--out", tmp_path / "ids"), "identities")
    assert reached["identities"].section.max_similarity is None


def test_generate_verb_passes_its_shard_as_an_option_and_writes_into_its_folder(tmp_path: Path, reached: dict) -> None:
    (tmp_path / "ids").mkdir()
    res = run("generate", "--generator", "idiff-face", "--weights", tmp_path / "m", "--identities", tmp_path / "ids",
              "--out", tmp_path / "ds", "--shard", "1/3", "--steps", 5, "--per-identity", 4, "--device", "cpu")
    _stopped_in(res, "generate")
    ctx = reached["generate"]
    assert ctx.options["shard"] == Shard(1, 3) and (ctx.section.steps, ctx.section.per_identity) == (5, 4)
    assert ctx.inputs == {"identities": tmp_path / "ids"} and ctx.dataset_dir == tmp_path / "ds"


def test_align_verb_gives_its_input_folder_as_the_stage_input(tmp_path: Path, reached: dict) -> None:
    (tmp_path / "in").mkdir()
    _stopped_in(run("align", tmp_path / "in", "--out", tmp_path / "al", "--detector", "none", "--workers", 1,
                    "--on-failure", "resize"), "align")
    ctx = reached["align"]
    assert ctx.inputs == {"generate": tmp_path / "in"} and ctx.dataset_dir == tmp_path / "al"
    assert (ctx.section.detector, ctx.section.on_failure, ctx.cfg.runtime.workers) == ("none", "resize", 1)


def test_train_verb_folds_set_and_epochs_into_the_section_and_resume_into_options(tmp_path: Path, reached: dict) -> None:
    (tmp_path / "ds").mkdir()
    res = run("--workdir", tmp_path / "w", "train", tmp_path / "ds", "--recipe", "idiff-face", "--set", "head.m=0.4",
              "--epochs", 3, "--max-steps", 7, "--restart", "--seed", 5, "--output", tmp_path / "t", "--no-track")
    _stopped_in(res, "train")
    ctx = reached["train"]
    assert ctx.section.overrides == {"head": {"m": 0.4}, "epochs": 3} and ctx.cfg.seed == 5
    assert ctx.options == {"resume": "restart", "max_steps": 7} and ctx.out_dir == tmp_path / "t"


def test_eval_verb_runs_the_eval_stage_in_a_hashed_folder_of_the_workdir(tmp_path: Path, reached: dict) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read by the fake stage")
    (tmp_path / "bins").mkdir()
    _stopped_in(run("--workdir", tmp_path / "w", "eval", "--model", model, "--data-dir", tmp_path / "bins",
                    "--benchmarks", "lfw", "--no-flip", "--no-track"), "eval")
    ctx = reached["eval"]
    assert ctx.inputs == {"train": model} and ctx.section.benchmarks == ["lfw"] and ctx.section.flip is False
    assert ctx.out_dir.parent == tmp_path / "w" / "runs" / "eval" and ctx.out_dir.name.startswith("eval-")


def test_metrics_verb_flags_become_the_sections_compute_list(tmp_path: Path, reached: dict) -> None:
    (tmp_path / "ds").mkdir()
    _stopped_in(run("--workdir", tmp_path / "w", "metrics", tmp_path / "ds", "--lpips", "--fid", "--identities", 3,
                    "--no-track"), "metrics")
    ctx = reached["metrics"]
    assert ctx.section.compute == ["lpips", "fid"] and ctx.section.identities == 3
    assert ctx.inputs == {"align": tmp_path / "ds"}


def test_a_verb_that_fails_leaves_no_output_folder_behind(tmp_path: Path, reached: dict) -> None:
    _stopped_in(run("identities", "-n", 5, "--out", tmp_path / "ids"), "identities")
    assert not (tmp_path / "ids").exists()


def test_a_verb_and_run_give_the_stage_the_same_hash_and_record_provenance(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("runtime: {device: cpu}\nidentities: {n: 6, max_similarity: 0.5, seed: 1}\n")
    res = run("identities", "--config", cfg, "--out", tmp_path / "ids")
    assert res.exit_code == 0, res.output
    done = json.loads((tmp_path / "ids" / "DONE.json").read_text())
    (planned,) = make_plan(load_config(cfg), STAGES, tmp_path / "w", "r", until="identities").stages
    assert done["hash"] == planned.hash
    assert done["runtime"] == {"device_type": "cpu", "dtype": "fp32"} and done["frbench_version"] and "torch" in done["packages"]
    assert done["output_digest"] and done["summary"]["counts"]["kept"] == 6


def test_a_second_process_on_a_verbs_output_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "in" / "a").mkdir(parents=True)
    with RunLock(tmp_path / "out"):
        res = run("align", tmp_path / "in", "--out", tmp_path / "out", "--detector", "none")
    assert res.exit_code == 2 and "another frbench run" in res.output and str(tmp_path / "out") in res.output


# ------------------------------------------------------------------------------- shards from run
def _demo(tmp_path: Path, *extra: str):
    return run("--workdir", tmp_path, "run", REPO / "configs" / "demo.yaml", "--no-track",
               "--set", "identities.n=4", "--set", "generate.per_identity=2", "--set", "generate.steps=2", *extra)


def test_run_shard_needs_the_stages_before_generate_finished_first(tmp_path: Path) -> None:
    res = _demo(tmp_path, "--shard", "0/2")
    assert res.exit_code == 2 and "--shard: finish identities first" in res.output
    assert not (tmp_path / "runs" / "demo").exists() or not any((tmp_path / "runs" / "demo").glob("generate-*"))


def test_run_shards_generate_side_by_side_and_the_last_one_finishes_the_stage(tmp_path: Path) -> None:
    assert _demo(tmp_path, "--until", "identities").exit_code == 0
    first = _demo(tmp_path, "--shard", "0/2")
    assert first.exit_code == 0 and "other shards still missing images" in first.output
    (gen,) = (tmp_path / "runs" / "demo").glob("generate-*")
    assert not (gen / "DONE.json").exists() and len(list(gen.rglob("*.png"))) == 2 * 2
    second = _demo(tmp_path, "--shard", "1/2")
    assert second.exit_code == 0 and "the dataset is complete" in second.output
    assert (gen / "DONE.json").exists() and len(list((gen / "dataset").rglob("*.png"))) == 4 * 2
    plan = _demo(tmp_path, "--dry-run", "--until", "generate")
    assert "cached" in plan.output and "resume" not in plan.output


def test_eval_with_an_unwritable_workdir_is_one_line_before_any_work(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"never loaded")
    (tmp_path / "bins").mkdir()
    (tmp_path / "file").write_text("a file, not a folder")
    res = run("--workdir", tmp_path / "file" / "w", "eval", "--model", model, "--data-dir", tmp_path / "bins", "--no-track")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1].startswith("error:") and "is a file, not a folder" in res.output
