"""The new-user path: two make targets, extras with install hints, one CLI grammar, errors before work,
doctor, and a non-editable install that finds its configs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import invoke as run, one_error_line
from fr_bench.cli import GLOBAL_OPTIONS, cli

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


# ----------------------------------------------------------------------------------- two commands
def _make_n(target: str) -> list[str]:
    # CI runs the suite from inside `make test`: a nested make would print "Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(["make", "--no-print-directory", "-n", "-B", target], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True).stdout
    return [ln.strip() for ln in out.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_make_demo_creates_the_venv_with_the_torch_recipe_then_runs_the_demo_and_the_leaderboard() -> None:
    lines = _make_n("demo")
    order = [next(i for i, ln in enumerate(lines) if key in ln) for key in
             ("-m venv .venv", "pip install -q torch==2.14.1 torchvision==0.29.1", 'pip install -q -e ".[dev]"',
              "--no-deps facenet-pytorch", "frbench --workdir frbench-work run configs/demo.yaml", "leaderboard")]
    assert order == sorted(order)  # torch first, then frbench, then the demo, then its leaderboard


def test_make_test_uses_the_same_environment_and_runs_the_suite() -> None:
    lines = _make_n("test")
    assert any("pip install -q torch==2.14.1 torchvision==0.29.1" in ln for ln in lines)
    assert lines[-1].endswith("python -m pytest -q tests")
    assert "make test" in (REPO / ".ci" / "run").read_text()


# ----------------------------------------------------------------------------------------- extras
def _python(code: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})})


BLOCK = ("import sys\nfor m in ('diffusers', 'transformers', 'lpips', 'torch_fidelity', 'safetensors'):\n"
         "    sys.modules[m] = None  # as if the extra were not installed\n")


def test_the_generator_registry_lists_adapters_without_their_heavy_dependencies() -> None:
    res = _python(BLOCK + "from fr_bench.generators import available_generators\nprint(sorted(available_generators()))")
    assert res.returncode == 0, res.stderr
    for name in ("arc2face", "fused-attention", "idiff-face", "uiface"):
        assert name in res.stdout


@pytest.mark.parametrize("call, extra", [
    ("from fr_bench.generators.sd_common import load_unet\nload_unet('/nonexistent')", "generate"),
    ("from fr_bench.metrics.diversity import load_lpips_vgg\nload_lpips_vgg('/nonexistent')", "diversity"),
    ("from fr_bench.metrics.fidelity import feature_layer\nfeature_layer('inception-v3-compat', 'fid')", "diversity"),
])
def test_a_missing_extra_is_one_line_naming_what_to_install(call: str, extra: str) -> None:
    code = BLOCK + "from fr_bench.errors import ConfigError\ntry:\n" + "".join(f"    {ln}\n" for ln in call.splitlines()) + \
        "except ConfigError as e:\n    print('ERR', e)\n"
    res = _python(code)
    assert res.returncode == 0, res.stderr
    assert f"pip install 'frbench[{extra}]'" in res.stdout and "\n" not in res.stdout.strip()


# ------------------------------------------------------------------------------------ one grammar
@pytest.mark.parametrize("verb", sorted(cli.commands))
def test_every_verb_takes_the_global_options_after_its_name(verb: str, tmp_path: Path) -> None:
    args = [verb, "--workdir", str(tmp_path), "--no-track", "--experiment", "x", "--tracking-uri", "sqlite:///x.db", "--debug", "--help"]
    res = run(*args)
    assert res.exit_code == 0, res.output
    assert all(GLOBAL_OPTIONS[name][0] in res.output for name in GLOBAL_OPTIONS)


def test_workdir_after_the_verb_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = CliRunner().invoke(cli, ["leaderboard", "--workdir", str(tmp_path / "w"), "--format", "csv"], obj={})
    assert res.exit_code == 0 and str(tmp_path / "w" / "mlflow.db") in res.stderr


def test_frbench_help_answers_quickly() -> None:
    t = time.perf_counter()
    res = subprocess.run([PY, "-m", "fr_bench.cli", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    assert res.returncode == 0 and "Commands:" in res.stdout
    assert elapsed < 5.0, elapsed  # ~0.3 s here; generous for a loaded CI machine (lazy imports: no torch)
    res = _python("import sys, fr_bench.cli\nprint('torch' in sys.modules, 'mlflow' in sys.modules)")
    assert res.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------- errors before work
@pytest.mark.parametrize("args, needle", [
    (["identities", "--source", "uniform", "-n", "10", "--out", "/proc/frbench-x"], "/proc/frbench-x: not writable"),
    (["identities", "--source", "uniform", "-n", "10", "--out", "{blocker}/ids"], "is a file, not a folder"),
    (["new-adapter", "foo", "--out", "{blocker}"], "is a file, not a folder"),
    (["metrics", "{tmp}", "--fr-model", "m.pt", "--output", "{blocker}/x.json"], "is a file, not a folder"),
    (["leaderboard", "--format", "html", "--output", "{blocker}/b.html"], "is a file, not a folder"),
    (["identities", "--source", "uniform", "-n", "1000000000000", "--out", "{tmp}/ids"], "GiB of memory"),
    (["identities", "--source", "uniform", "-n", "100", "--max-candidates", "50", "--out", "{tmp}/ids"], "--max-candidates"),
])
def test_bad_outputs_and_counts_are_one_line_exit_2_and_nothing_is_created(args: list[str], needle: str, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    res = run("--workdir", tmp_path / "w", *[a.format(blocker=blocker, tmp=tmp_path) for a in args])
    assert needle in one_error_line(res)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no workdir, no output folder


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_on_a_machine_without_it_is_one_line(tmp_path: Path) -> None:
    res = run("identities", "--source", "uniform", "-n", "4", "--device", "cuda", "--out", tmp_path / "ids")
    assert "CUDA" in one_error_line(res)


def test_a_corrupt_png_is_reported_by_frbench_alone(tmp_path: Path) -> None:
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "a" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    res = subprocess.run([PY, "-m", "fr_bench.cli", "align", str(tmp_path / "in"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True)  # a real process: OpenCV writes to file descriptor 2
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "0.png" in lines[0] and "WARN" not in lines[0], lines


def test_a_pickled_model_file_says_unsafe_pickle(tmp_path: Path) -> None:
    import argparse
    from collections import OrderedDict

    import torch

    from fr_bench.errors import InputError
    from fr_bench.models import load_fr_model

    torch.save(OrderedDict(w=torch.zeros(1), extra=argparse.Namespace(x=1)), tmp_path / "m.pt")
    with pytest.raises(InputError, match=r"unsafe pickle: refused to load it \(argparse.Namespace\).*nothing in it was run"):
        load_fr_model(tmp_path / "m.pt")


# ----------------------------------------------------------------------------------------- doctor
def test_doctor_lists_each_missing_file_with_where_to_get_it(tmp_path: Path) -> None:
    (tmp_path / "bins").mkdir()
    (tmp_path / "bins" / "lfw.bin").write_bytes(b"x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"generate: {{generator: idiff-face, weights: {tmp_path / 'model'}}}\n"
                   f"eval: {{data_dir: {tmp_path / 'bins'}, benchmarks: [lfw, cfp_fp, ijbc]}}\n"
                   f"metrics: {{fr_model: {tmp_path / 'fr.onnx'}}}\n")
    res = CliRunner(env={"COLUMNS": "300"}).invoke(cli, ["doctor", str(cfg)], obj={})
    assert res.exit_code == 1, res.output
    out = res.output
    assert "idiff-face weights" in out and "fdbtrs/IDiff-Face" in out
    assert "cfp_fp.bin" in out and "faces_webface_112x112" in out and "IJB_release" in out
    assert "FR model for separability" in out and "torch" in out and "onnxruntime" in out
    lfw_line = next(ln for ln in out.splitlines() if "lfw.bin" in ln)
    assert "✓" in lfw_line


def test_doctor_on_a_complete_config_exits_0(tmp_path: Path) -> None:
    (tmp_path / "bins").mkdir()
    for b in ("lfw", "cfp_fp"):
        (tmp_path / "bins" / f"{b}.bin").write_bytes(b"x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"eval: {{data_dir: {tmp_path / 'bins'}, benchmarks: [lfw, cfp_fp]}}\n")
    res = CliRunner(env={"COLUMNS": "300"}).invoke(cli, ["doctor", str(cfg)], obj={})
    assert res.exit_code == 0 and "everything this config reads is present" in res.output, res.output


# ----------------------------------------------------------------------------- non-editable install
@pytest.mark.slow
def test_a_built_wheel_runs_the_demo_plan_from_another_folder(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([PY, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
                   check=True, capture_output=True)
    wheel = next(dist.glob("frbench-*.whl"))
    site = tmp_path / "site"  # the wheel alone, over this environment's dependencies
    subprocess.run([PY, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site)}
    where = _python("import fr_bench, fr_bench.recipes as r; print(fr_bench.__file__); print(r.PRESET_DIR)", cwd=elsewhere, env=env)
    assert where.stdout.splitlines()[0].startswith(str(site)) and str(site) in where.stdout.splitlines()[1], where.stdout
    res = subprocess.run([PY, "-m", "fr_bench.cli", "--workdir", str(tmp_path / "w"), "run", "configs/demo.yaml", "--dry-run"],
                         cwd=elsewhere, capture_output=True, text=True, env={**os.environ, **env, "COLUMNS": "200"})
    assert res.returncode == 0, res.stdout + res.stderr
    for stage in ("identities", "generate", "align", "train", "eval", "metrics"):
        assert stage in res.stdout + res.stderr  # the plan table (frbench's console writes to stderr)
    res = subprocess.run([PY, "-m", "fr_bench.cli", "leaderboard", "--format", "csv", "--no-published"], cwd=elsewhere,
                         capture_output=True, text=True, env={**os.environ, **env})
    assert res.returncode == 0, res.stderr
