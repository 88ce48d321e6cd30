"""`frbench train` end to end on tiny datasets: learning, resume after kill -9, exports, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import invoke as run, one_error_line
from fr_bench.cli import cli
from fr_bench.config import TrainRecipe
from fr_bench.embed import l2_normalize
from fr_bench.models import load_fr_model
from fr_bench.train import export_onnx, lr_multiplier
from trainkit import identity_images, make_folder_dataset, make_rec_dataset, register_tiny

register_tiny()
TESTS = Path(__file__).resolve().parent
TINY = ["--set", "model.arch=tiny", "--set", "model.embedding_size=32", "--set", "optimizer.lr_batch_size=8"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("train") / "ds", n_ids=4, per_id=6)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_a_few_steps_on_a_tiny_dataset_reduce_the_loss(tmp_path: Path, dataset: Path, cache: Path) -> None:
    out = tmp_path / "run"
    res = run("--workdir", tmp_path, "train", dataset, "--recipe", "idiff-face", *TINY, "--set", "model.dropout=0",
              "--batch-size", 8, "--epochs", 8, "--no-track", "--device", "cpu", "--output", out, "--cache-dir", cache)
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "train.json").read_text())
    losses = doc["epoch_losses"]
    assert len(losses) == 8 and doc["steps"] == 24 and doc["identities"] == 4 and doc["images"] == 24
    assert losses[-1] < 0.8 * losses[0], losses
    assert doc["final_loss"] == losses[-1] and doc["samples_per_s"] > 0 and doc["recipe"] == "idiff-face"
    assert len(doc["recipe_hash"]) == 16 and doc["recipe_config"]["augment"]["randaugment"] == {"num_ops": 4, "magnitude": 16}


def _train_args(dataset: Path, cache: Path, out: Path) -> list[str]:
    return [str(a) for a in ("--workdir", out.parent, "train", dataset, "--recipe", "arc2face", *TINY, "--set", "model.dropout=0.3",
                             "--batch-size", 8, "--epochs", 10, "--checkpoint-every", 2, "--deterministic", "--seed", 3,
                             "--no-track", "--device", "cpu", "--output", out, "--cache-dir", cache)]


def test_kill_9_then_the_same_command_ends_with_the_uninterrupted_weights(tmp_path: Path, dataset: Path, cache: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    res = CliRunner().invoke(cli, _train_args(dataset, cache, straight), obj={})
    assert res.exit_code == 0, res.output

    script = "import sys, trainkit; trainkit.register_tiny(); from fr_bench.cli import main; main()"
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "2", "FRBENCH_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, *_train_args(dataset, cache, killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = killed / "checkpoint.json"
    deadline = time.time() + 120
    step = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            step = json.loads(marker.read_text())["step"]
        except (OSError, ValueError):
            step = 0
        if step >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (killed / "train.json").exists() and step < 30

    res = CliRunner().invoke(cli, _train_args(dataset, cache, killed), obj={})
    assert res.exit_code == 0, res.output
    assert "resuming from step" in res.output
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(killed / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(straight / "checkpoint.pt", weights_only=True)
    cb = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(ca["head"][k], cb["head"][k]) for k in ca["head"])  # incl. AdaFace's EMA statistics
    assert ca["step"] == cb["step"] == 30 and ca["head"]["batch_mean"].item() != 20.0
    mom_a = [s["momentum_buffer"] for s in ca["optimizer"]["state"].values()]
    mom_b = [s["momentum_buffer"] for s in cb["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(mom_a, mom_b))
    sa, sb = (json.loads((d / "train.json").read_text()) for d in (straight, killed))
    assert sa["epoch_losses"] == sb["epoch_losses"] and sa["recipe_hash"] == sb["recipe_hash"]

    again = CliRunner().invoke(cli, _train_args(dataset, cache, killed), obj={})  # finished: nothing retrained
    assert again.exit_code == 0 and "already trained" in again.output


def test_exported_onnx_equals_torch_and_both_load_like_frbench_eval(tmp_path: Path) -> None:
    ds = make_folder_dataset(tmp_path / "ds", n_ids=2, per_id=1)
    out = tmp_path / "run"
    res = run("--workdir", tmp_path, "train", ds, "--recipe", "arcface-torch", "--set", "model.arch=r18", "--batch-size", 2,
              "--max-steps", 1, "--no-track", "--device", "cpu", "--output", out)
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "train.json").read_text())
    assert doc["truncated"] and doc["steps"] == 1 and doc["onnx_max_rel_diff"] < 1e-4
    images = np.stack([im for ims in identity_images(2, 1, seed=9) for im in ims])
    pt = load_fr_model(out / "model.pt", device="cpu")
    onnx = load_fr_model(out / "model.onnx", device="cpu")  # routed by insightface's model zoo
    assert pt.dim == onnx.dim == 512 and "ONNX" not in pt.description
    a, b = pt.embed(images, flip=True), onnx.embed(images, flip=True)
    # an r18 after one step has huge raw outputs (1e8): compare at their scale, and after L2 normalisation
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    np.testing.assert_allclose(l2_normalize(a), l2_normalize(b), atol=1e-4)


def test_ir_se_backbone_round_trips_through_state_dict_and_onnx(tmp_path: Path) -> None:
    from fr_bench.models.irse import infer_irse_arch, irse

    torch.manual_seed(0)
    model = irse("irse18", num_features=64).eval()
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    sd = model.state_dict()
    assert infer_irse_arch(sd) == "irse18" and "body.0.res_layer.6.fc1.weight" in sd and "output_layer.4.running_var" in sd
    torch.save(sd, tmp_path / "irse.pt")
    images = np.stack([im for ims in identity_images(2, 1, seed=3) for im in ims])
    got = load_fr_model(tmp_path / "irse.pt", device="cpu").embed(images)
    with torch.no_grad():
        want = model((torch.from_numpy(images).permute(0, 3, 1, 2).float() - 127.5) / 127.5).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # ONNX Runtime and PyTorch use different fp32 conv kernels (another summation order, BN folded
    # into the conv): each of the ~20 layers adds ≈ √(fan-in)·ε ≈ √4608·6e-8 ≈ 4e-6 of the activation
    # scale, so a few 1e-4 of the output scale bound the difference; relative error per element is
    # meaningless for outputs near zero.
    scale = float(np.abs(want).max())
    assert export_onnx(model, tmp_path / "irse.onnx") < 5e-4
    np.testing.assert_allclose(load_fr_model(tmp_path / "irse.onnx", device="cpu").embed(images), want, rtol=0, atol=5e-4 * scale)


def test_lr_schedules_are_fixed_functions_of_the_step() -> None:
    step = TrainRecipe.model_validate({"schedule": {"type": "step", "milestones": [2, 3], "gamma": 0.1, "warmup_epochs": 1}})
    got = [lr_multiplier(s, step, 10, 40) for s in (0, 5, 10, 19, 20, 29, 30, 39)]
    assert got == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    poly = TrainRecipe.model_validate({"schedule": {"type": "poly", "power": 2.0}})
    assert [lr_multiplier(s, poly, 10, 40) for s in (0, 20, 39)] == pytest.approx([1.0, 0.25, (1 / 40) ** 2])


# ------------------------------------------------------------------------------------ bad input
def test_dataset_with_one_identity_is_one_line(tmp_path: Path) -> None:
    ds = make_folder_dataset(tmp_path / "solo", n_ids=1, per_id=3)
    err = one_error_line(run("train", ds, "--no-track", "--device", "cpu", "--output", tmp_path / "o"))
    assert f"{ds}: dataset has 1 identity folders with usable images; a recognizer needs at least 2" in err


def test_unreadable_images_are_skipped_with_a_count_or_fail_by_flag(tmp_path: Path, cache: Path) -> None:
    ds = make_folder_dataset(tmp_path / "ds", n_ids=3, per_id=3)
    bad = [ds / "id001" / "01.jpg", ds / "id002" / "02.jpg"]
    for p in bad:
        p.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    args = ["--workdir", tmp_path, "train", ds, "--recipe", "idiff-face", *TINY, "--batch-size", 4, "--max-steps", 1,
            "--no-track", "--device", "cpu", "--cache-dir", cache]
    res = run(*args, "--output", tmp_path / "skip")
    assert res.exit_code == 0, res.output
    assert f"skipped 2 unreadable image(s) in {ds} (first: {bad[0]})" in " ".join(res.output.split())
    doc = json.loads((tmp_path / "skip" / "train.json").read_text())
    assert doc["images"] == 7 and doc["skipped_unreadable"] == 2
    err = one_error_line(run(*args, "--output", tmp_path / "strict", "--strict-images"))
    assert f"{bad[0]}: cannot decode image (2 unreadable image(s)" in err
    assert not (tmp_path / "strict" / "model.pt").exists()


def test_corrupt_rec_record_reports_its_offset(tmp_path: Path) -> None:
    folder, offsets, _ = make_rec_dataset(tmp_path / "rec", n_ids=2, per_id=3)
    blob = bytearray((folder / "train.rec").read_bytes())
    blob[offsets[4] + 2] ^= 0xFF  # damage the magic word of record 4
    (folder / "train.rec").write_bytes(bytes(blob))
    err = one_error_line(run("--workdir", tmp_path, "train", folder, "--no-track", "--device", "cpu", "--output", tmp_path / "o"))
    assert f"{folder / 'train.rec'}: corrupt record 4 at offset {offsets[4]}: bad magic" in err


def test_recordio_dataset_trains(tmp_path: Path, cache: Path) -> None:
    folder, _, _ = make_rec_dataset(tmp_path / "rec", n_ids=3, per_id=4)
    res = run("--workdir", tmp_path, "train", folder, "--recipe", "uiface", *TINY, "--batch-size", 6, "--max-steps", 2,
              "--no-track", "--device", "cpu", "--output", tmp_path / "o", "--cache-dir", cache)
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "o" / "train.json").read_text())
    assert doc["dataset_kind"] == "recordio" and doc["images"] == 12 and doc["identities"] == 3


def test_recipe_key_typos_name_the_key_and_the_closest_one(tmp_path: Path, dataset: Path) -> None:
    err = one_error_line(run("train", dataset, "--set", "optimizer.lrr=0.2", "--no-track"))
    assert "--set: unknown key 'optimizer.lrr' (did you mean 'lr'?)" in err
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("model: {arch: r50}\nhead: {type: arcface, margn: 0.5}\n")
    err = one_error_line(run("train", dataset, "--recipe", recipe, "--no-track"))
    assert f"{recipe}: unknown key 'head.margn'" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  recipe: idiff-face\n  checkpoint_evry: 5\n")
    err = one_error_line(run("train", dataset, "--config", cfg, "--no-track"))
    assert f"{cfg}: unknown key 'train.checkpoint_evry' (did you mean 'checkpoint_every'?)" in err
    err = one_error_line(run("train", dataset, "--recipe", "idiff-fase", "--no-track"))
    assert "unknown recipe 'idiff-fase' (did you mean 'idiff-face'?)" in err
    err = one_error_line(run("train", dataset, "--set", "head.h=0.3", "--no-track"))
    assert "'h' does not apply to a cosface head (it takes s, m)" in err


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path: Path, dataset: Path, cache: Path) -> None:
    out = tmp_path / "o"
    base = ["--workdir", tmp_path, "train", dataset, "--recipe", "idiff-face", *TINY, "--batch-size", 8, "--max-steps", 1,
            "--no-track", "--device", "cpu", "--output", out, "--cache-dir", cache]
    err = one_error_line(run(*base, "--resume"))
    assert "no checkpoint to resume from" in err
    assert run(*base).exit_code == 0
    err = one_error_line(run(*base, "--set", "head.m=0.5"))
    assert f"{out}: holds a checkpoint of another run (recipe_hash" in err and "--restart" in err
    assert run(*base, "--set", "head.m=0.5", "--restart").exit_code == 0
