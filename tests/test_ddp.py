"""DDP on CPU (gloo): two processes with half the batch each end where one process with the whole batch ends."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from fr_bench.train import _mix
from trainkit import TinyNoBN, ddp_worker, make_folder_dataset, register_tiny_nobn

pytestmark = pytest.mark.slow  # end-to-end: deselected by make test-fast (-m 'not slow')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world: int, dataset: Path, out: Path, cache: Path) -> dict[str, torch.Tensor]:
    mp.spawn(ddp_worker, args=(world, _free_port(), str(dataset), str(out), str(cache)), nprocs=world, join=True)
    return torch.load(out / "model.pt", weights_only=True)


def test_two_gloo_processes_equal_one_process_with_the_same_total_batch(tmp_path: Path) -> None:
    dataset = make_folder_dataset(tmp_path / "ds", n_ids=4, per_id=6)
    one = _run(1, dataset, tmp_path / "one", tmp_path / "cache")
    two = _run(2, dataset, tmp_path / "two", tmp_path / "cache")
    assert json.loads((tmp_path / "two" / "train.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "one" / "train.json").read_text())["steps"] == 6
    # Same samples, augmentation and dropout masks per sample; DDP averages two half-batch mean
    # gradients where one process takes the mean over the whole batch: the same sum in another order,
    # ~1e-7 relative per step, over 6 SGD steps at lr 0.1 → far below 1e-4.
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=1e-4, rtol=1e-4, msg=name)
    # and training moved the weights well beyond that tolerance
    register_tiny_nobn()
    torch.manual_seed(_mix(5, 0xB0D))  # the trainer's initial weights for seed 5
    init = TinyNoBN(0.3, 16).state_dict()
    assert max(float((one[k] - init[k]).abs().max()) for k in init) > 1e-2


def test_the_train_verb_under_torchrun_runs_on_every_rank_and_rank_0_records(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    dataset = make_folder_dataset(tmp_path / "ds", n_ids=4, per_id=6)
    out = tmp_path / "out"
    tests = Path(__file__).resolve().parent
    script = "import trainkit; trainkit.register_tiny_nobn(); from fr_bench.cli import main; main()"
    args = ["--workdir", tmp_path / "w", "train", dataset, "--recipe", "arc2face", "--set", "model.arch=tiny-nobn",
            "--set", "model.embedding_size=16", "--set", "optimizer.lr_batch_size=8", "--batch-size", 8, "--epochs", 1,
            "--device", "cpu", "--workers", 1, "--output", out, "--cache-dir", tmp_path / "cache", "--no-track"]
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": f"{tests}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                                   "OMP_NUM_THREADS": "1", "FRBENCH_NO_PROGRESS": "1", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(2)]
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert json.loads((out / "train.json").read_text())["world_size"] == 2
    done = json.loads((out / "DONE.json").read_text())
    assert done["stage"] == "train" and done["summary"]["train"]["world_size"] == 2
    assert "frbench train" in outputs[0] and "frbench train" not in outputs[1]  # rank 0 alone reports
