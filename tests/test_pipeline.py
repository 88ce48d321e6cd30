"""The stage graph: content-hashed stage dirs, skip when finished, resume, lock, partial entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fr_bench.cache import RunLock, path_digest, stable_hash
from typing import Optional

from fr_bench.config import InputsConfig, Section, validate
from fr_bench.errors import FrBenchError, InputError
from fr_bench.pipeline import Stage, execute, make_plan


def _stages(calls: list[str]) -> dict[str, Stage]:
    def make(name: str):
        def run(ctx):
            calls.append(name)
            (ctx.out_dir / "out.txt").write_text(f"{name}:{sorted(ctx.inputs)}")
            return {"metrics": {f"{name}/value": 1.0}}

        return run

    deps = {"identities": (), "generate": ("identities",), "align": ("generate",), "train": ("align",), "eval": ("train",)}
    return {n: Stage(n, d, make(n)) for n, d in deps.items()}


class GraphConfig(Section):
    """A stand-in for the real config: same graph-relevant fields, free-form stage sections."""

    seed: int = 0
    inputs: InputsConfig = InputsConfig()
    identities: Optional[dict] = None
    generate: Optional[dict] = None
    align: Optional[dict] = None
    train: Optional[dict] = None
    eval: Optional[dict] = None


@pytest.fixture()
def cfg() -> GraphConfig:
    data = {"identities": {"source": "uniform", "n": 4}, "generate": {}, "align": {}, "train": {}, "eval": {}}
    return validate(data, GraphConfig)


def test_stable_hash_ignores_key_order() -> None:
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_second_run_skips_every_finished_stage(tmp_path: Path, cfg) -> None:
    calls: list[str] = []
    stages = _stages(calls)
    plan = make_plan(cfg, stages, tmp_path, "r")
    assert [p.status for p in plan.stages] == ["run"] * 5
    execute(plan, cfg, tmp_path)
    assert calls == ["identities", "generate", "align", "train", "eval"]
    again = make_plan(cfg, stages, tmp_path, "r")
    assert [p.status for p in again.stages] == ["cached"] * 5
    execute(again, cfg, tmp_path)
    assert len(calls) == 5
    done = json.loads((again.stages[0].dir.done_file).read_text())
    assert done["summary"]["metrics"] == {"identities/value": 1.0}


def test_changing_a_section_reruns_it_and_everything_downstream(tmp_path: Path, cfg) -> None:
    stages = _stages([])
    first = make_plan(cfg, stages, tmp_path, "r")
    execute(first, cfg, tmp_path)
    changed = cfg.model_copy(update={"seed": cfg.seed + 1})
    second = make_plan(changed, stages, tmp_path, "r")
    assert all(a.hash != b.hash for a, b in zip(first.stages, second.stages))


def test_unfinished_stage_dir_is_resumed(tmp_path: Path, cfg) -> None:
    stages = _stages([])
    plan = make_plan(cfg, stages, tmp_path, "r")
    plan.stages[0].dir.path.mkdir(parents=True)
    (plan.stages[0].dir.path / "partial").write_text("x")
    assert make_plan(cfg, stages, tmp_path, "r").stages[0].status == "resume"


def test_external_dataset_replaces_upstream_stages(tmp_path: Path, cfg) -> None:
    ds = tmp_path / "dataset"
    (ds / "00000").mkdir(parents=True)
    (ds / "00000" / "000.png").write_bytes(b"x")
    c = cfg.model_copy(update={"inputs": cfg.inputs.model_copy(update={"dataset": ds})})
    calls: list[str] = []
    plan = make_plan(c, _stages(calls), tmp_path, "r")
    assert [p.stage.name for p in plan.stages] == ["train", "eval"]
    execute(plan, c, tmp_path)
    assert calls == ["train", "eval"]


def test_missing_external_input_is_named(tmp_path: Path, cfg) -> None:
    c = cfg.model_copy(update={"inputs": cfg.inputs.model_copy(update={"model": tmp_path / "nope.pt"})})
    with pytest.raises(InputError, match="nope.pt: inputs.model does not exist"):
        make_plan(c, _stages([]), tmp_path, "r")


def test_from_requires_upstream_finished(tmp_path: Path, cfg) -> None:
    with pytest.raises(InputError, match="needs stage 'identities' finished first"):
        make_plan(cfg, _stages([]), tmp_path, "r", start="train")


def test_until_stops_early(tmp_path: Path, cfg) -> None:
    plan = make_plan(cfg, _stages([]), tmp_path, "r", until="align")
    assert [p.stage.name for p in plan.stages] == ["identities", "generate", "align"]


def test_second_lock_on_the_same_run_is_refused(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run"):
        with pytest.raises(FrBenchError, match="another frbench run .* is using this run directory"):
            with RunLock(tmp_path / "run"):
                pass


def test_path_digest_sees_added_files(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"1")
    before = path_digest(tmp_path)
    (tmp_path / "b.png").write_bytes(b"2")
    assert path_digest(tmp_path) != before


def _hashes(cfg_data: dict, tmp_path: Path) -> dict[str, str]:
    from fr_bench.config import Config
    from fr_bench.stages import STAGES

    cfg = validate(cfg_data, Config)
    return {ps.stage.name: ps.hash for ps in make_plan(cfg, STAGES, tmp_path, "r").stages}


def test_runtime_dtype_or_device_changes_the_hash_of_generate_train_and_eval_but_batch_size_does_not(tmp_path: Path) -> None:
    base = {"identities": {"source": "uniform", "n": 4}, "generate": {"generator": "idiff-face"}, "align": {},
            "train": {}, "eval": {"data_dir": str(tmp_path)}, "runtime": {"device": "cpu", "dtype": "fp32", "batch_size": 64}}
    ref = _hashes(base, tmp_path)
    bf16 = _hashes({**base, "runtime": {**base["runtime"], "dtype": "bf16"}}, tmp_path)
    cuda = _hashes({**base, "runtime": {**base["runtime"], "device": "cuda"}}, tmp_path)
    batch = _hashes({**base, "runtime": {**base["runtime"], "batch_size": 512}}, tmp_path)
    for stage in ("generate", "train", "eval"):
        assert bf16[stage] != ref[stage] and cuda[stage] != ref[stage], stage
    assert batch == ref  # speed settings do not change results


def test_weights_replaced_at_the_same_path_change_the_hash_of_generate_and_what_follows(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    (weights / "checkpoints").mkdir(parents=True)
    (weights / "checkpoints" / "ema.ckpt").write_bytes(b"A" * 64)
    base = {"identities": {"source": "uniform", "n": 4}, "generate": {"generator": "idiff-face", "weights": str(weights)},
            "align": {}, "runtime": {"device": "cpu"}}
    before = _hashes(base, tmp_path / "w")
    (weights / "checkpoints" / "ema.ckpt").write_bytes(b"B" * 64)  # same size, same path, other weights
    after = _hashes(base, tmp_path / "w")
    assert after["identities"] == before["identities"]
    assert after["generate"] != before["generate"] and after["align"] != before["align"]


def test_a_benchmark_pack_replaced_at_the_same_path_changes_the_eval_hash(tmp_path: Path) -> None:
    bins = tmp_path / "bins"
    bins.mkdir()
    (bins / "lfw.bin").write_bytes(b"pairs-1")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"m")
    base = {"inputs": {"model": str(model)}, "eval": {"data_dir": str(bins), "benchmarks": ["lfw"]}}
    before = _hashes(base, tmp_path / "w")
    (bins / "cfp_fp.bin").write_bytes(b"not scored")
    assert _hashes(base, tmp_path / "w") == before  # only the packs scored count
    (bins / "lfw.bin").write_bytes(b"pairs-2")
    assert _hashes(base, tmp_path / "w")["eval"] != before["eval"]


def test_model_file_digests_are_read_once_per_workdir_and_never_written_by_planning(tmp_path: Path, monkeypatch) -> None:
    import fr_bench.cache as cache
    from fr_bench.cache import DigestCache

    model = tmp_path / "fr.onnx"
    model.write_bytes(b"weights")
    reads = []
    real = cache.sha256_file
    monkeypatch.setattr(cache, "sha256_file", lambda p: reads.append(p) or real(p))
    store = tmp_path / "w" / "cache" / "digests.json"
    first = DigestCache(store)
    digest = first.of(model)
    assert not store.exists()  # planning (and --dry-run) writes nothing
    first.save()
    assert DigestCache(store).of(model) == digest and len(reads) == 1  # the second plan does not re-read it
    assert DigestCache(store).of(tmp_path / "missing.onnx") == "absent"


def test_runs_a_killed_invocation_left_running_are_marked_killed_by_the_next(tmp_path: Path, cfg, monkeypatch) -> None:
    from fr_bench.pipeline import RUNS_LEDGER
    from fr_bench.tracking import Tracker, search_runs

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(tmp_path, experiment="killed", warn=pytest.fail)
    plan = make_plan(cfg, _stages([]), tmp_path, "r")
    # what kill -9 leaves: a parent and a child run still RUNNING, listed in the run dir's ledger
    with tracker.start_run("warm-up"):
        pass
    exp = tracker.client.get_experiment_by_name("killed").experiment_id
    stale = [tracker.client.create_run(exp, run_name=n).info.run_id for n in ("old parent", "old child")]
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    (plan.run_dir / RUNS_LEDGER).write_text(json.dumps(stale))
    execute(plan, cfg, tmp_path, tracker=tracker, run_tags={"generator": "idiff-face"})
    runs = {r["run_id"]: r for r in search_runs(tracker.uri, "killed")}
    assert [runs[r]["status"] for r in stale] == ["KILLED", "KILLED"]
    parent = next(r for r in runs.values() if r["tags"].get("frbench.stage") == "run")
    assert parent["status"] == "FINISHED" and parent["name"].startswith("r · idiff-face · ")
    assert not (plan.run_dir / RUNS_LEDGER).exists()  # a clean end leaves nothing to mark


def test_done_json_records_provenance(tmp_path: Path, cfg) -> None:
    plan = make_plan(cfg, _stages([]), tmp_path, "r")
    execute(plan, cfg, tmp_path)
    done = json.loads((plan.stages[1].dir.path / "DONE.json").read_text())  # generate, fed by identities
    assert done["frbench"] and "torch" in done["packages"] and "git_commit" in done
    assert done["input_hashes"] == {"identities": plan.stages[0].hash} and done["config"] == {}
    assert len(done["output_digest"]) == 64 and set(done["runtime"]) <= {"device_type", "dtype"}


def test_the_experiment_is_tagged_so_the_mlflow_ui_opens_on_the_runs_table(tmp_path, monkeypatch):
    from fr_bench.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(tmp_path, experiment="kind", warn=pytest.fail)
    with tracker.start_run("one"):
        pass
    exp = tracker.client.get_experiment_by_name("kind")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"


def test_parent_params_are_namespaced_per_stage_so_two_stages_never_collide(tmp_path, cfg, monkeypatch):
    from fr_bench.tracking import Tracker, search_runs

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def stage(n: int):
        return lambda ctx: {"params": {"identities": n, "seed": n}}

    stages = {"identities": Stage("identities", (), stage(10050)), "generate": Stage("generate", ("identities",), stage(10000))}
    tracker = Tracker(tmp_path, experiment="ns", warn=pytest.fail)  # a refused param would warn
    execute(make_plan(cfg, stages, tmp_path, "r"), cfg, tmp_path, tracker=tracker)
    parent = next(r for r in search_runs(tracker.uri, "ns") if r["tags"].get("frbench.stage") == "run")
    assert parent["params"]["identities.identities"] == "10050" and parent["params"]["generate.identities"] == "10000"
    assert parent["params"]["identities"] == "10050"  # the bare key the leaderboard reads: the first stage's
