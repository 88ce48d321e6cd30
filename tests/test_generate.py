"""``frbench generate``: seeds per image, batching/sharding invariance, kill-and-resume, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from _idiff_reference import write_tiny_release
from fr_bench.cli import cli
from fr_bench.generate import Shard, generation_device
from fr_bench.generators.base import sample_seed

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gen") / "unet-cond-ca-tiny"
    write_tiny_release(folder, seed=11)
    return folder


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain N×512 contexts file (no negatives)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 512))
    path = tmp_path_factory.mktemp("ctx") / "contexts.npy"
    np.save(path, (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    return path


def generate(*args: str) -> "object":
    return CliRunner().invoke(cli, ["generate", "--device", "cpu", *args], catch_exceptions=False)


def base(model_dir: Path, ids: Path, out: Path, *extra: str) -> list[str]:
    return ["--generator", "idiff-face", "--weights", str(model_dir), "--identities", str(ids), "--out", str(out),
            "--num-identities", "6", "--per-identity", "3", "--steps", "8", *extra]


def digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.png"))}


def one_line(output: str) -> str:
    return " ".join(output.split())


@pytest.mark.slow
def test_batch_size_and_shards_do_not_change_a_single_pixel(model_dir, contexts, tmp_path):
    for bs, out in (("2", "b2"), ("5", "b5"), ("1", "b1")):
        res = generate(*base(model_dir, contexts, tmp_path / out, "--batch-size", bs))
        assert res.exit_code == 0, res.output
    res = generate(*base(model_dir, contexts, tmp_path / "sh", "--batch-size", "4", "--shard", "1/2"))
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "sh" / "manifest.parquet").exists()  # shard 0/2 still missing
    res = generate(*base(model_dir, contexts, tmp_path / "sh", "--batch-size", "3", "--shard", "0/2"))
    assert res.exit_code == 0 and "dataset complete" in res.output, res.output
    ref = digests(tmp_path / "b2")
    assert len(ref) == 18 and len(set(ref.values())) == 18
    assert digests(tmp_path / "b5") == ref
    assert digests(tmp_path / "b1") == ref
    assert digests(tmp_path / "sh") == ref
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "sh" / "manifest.parquet"),
                                  pd.read_parquet(tmp_path / "b2" / "manifest.parquet"))


def test_manifest_lists_every_image_with_its_seed(model_dir, contexts, tmp_path):
    out = tmp_path / "ds"
    assert generate(*base(model_dir, contexts, out, "--seed", "7")).exit_code == 0
    df = pd.read_parquet(out / "manifest.parquet")
    assert list(df.columns) == ["identity", "sample", "seed", "path", "context_row"]
    assert len(df) == 18 and not df.duplicated(["identity", "sample"]).any()
    assert (df["path"] == [f"{i:05d}/{k:03d}.png" for i in range(6) for k in range(3)]).all()
    assert (df["seed"] == [sample_seed(7, i, k) for i, k in zip(df["identity"], df["sample"])]).all()
    assert (df["context_row"] == df["identity"]).all()
    assert all((out / p).is_file() for p in df["path"])
    settings = json.loads((out / "generate.json").read_text())
    assert settings["seed"] == 7 and settings["adapter"]["steps"] == 8 and settings["adapter"]["guidance"] == "none"


@pytest.mark.slow
def test_killed_run_resumes_to_the_bytes_of_an_uninterrupted_run(model_dir, contexts, tmp_path):
    args = ["--generator", "idiff-face", "--weights", str(model_dir), "--identities", str(contexts),
            "--per-identity", "5", "--steps", "20", "--batch-size", "2", "--device", "cpu"]
    total = 8 * 5
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FRBENCH_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fr_bench.cli", "generate", *args, "--out", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(out.rglob("*.png"))) < 4:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = len(list(out.rglob("*.png")))
    assert 4 <= at_kill < total, f"kill landed at {at_kill}/{total} images: {proc.stdout.read().decode()[-500:]}"
    assert not (out / "manifest.parquet").exists()

    res = generate(*args, "--out", str(out))
    assert res.exit_code == 0, res.output
    assert f"{total - at_kill} images ({at_kill} already present)" in one_line(res.output)
    assert generate(*args, "--out", str(tmp_path / "clean")).exit_code == 0
    assert digests(out) == digests(tmp_path / "clean")
    assert len(digests(out)) == total
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet"),
                                  pd.read_parquet(tmp_path / "clean" / "manifest.parquet"))


def test_contexts_of_the_wrong_dimension_are_refused(model_dir, tmp_path):
    bad = tmp_path / "ids"
    bad.mkdir()
    np.save(bad / "identities.npy", np.ones((4, 256), dtype=np.float32))
    res = generate("--generator", "idiff-face", "--weights", str(model_dir), "--identities", str(bad),
                   "--out", str(tmp_path / "out"))
    assert res.exit_code == 2
    msg = one_line(res.output)
    assert "identities.npy" in msg and "4×256" in msg and "N×512" in msg and "Traceback" not in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec", ["3/2", "2/2", "-1/2", "1/0", "half"])
def test_impossible_shards_are_refused(model_dir, contexts, tmp_path, spec):
    res = generate(*base(model_dir, contexts, tmp_path / "out", "--shard", spec))
    assert res.exit_code == 2 and "--shard" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_shards_come_from_torchrun_and_partition_the_identities():
    assert Shard.from_env({"RANK": "1", "WORLD_SIZE": "4"}) == Shard(1, 4)
    assert Shard.from_env({}) is None
    parts = [list(Shard(i, 4).identities(10)) for i in range(4)]
    assert sum(parts, []) == list(range(10)) and all(parts)
    assert generation_device("cuda", {"LOCAL_RANK": "2"}) == torch.device("cuda:2")
    assert generation_device("cpu", {"LOCAL_RANK": "2"}) == torch.device("cpu")


def test_unknown_generator_lists_the_registered_ones(tmp_path):
    res = generate("--generator", "idiff-fase", "--weights", "w", "--identities", "i", "--out", str(tmp_path))
    assert res.exit_code == 2
    assert "unknown generator 'idiff-fase'" in res.output
    for name in ("idiff-face", "negfacediff", "adaptdiff"):
        assert name in res.output


def test_resuming_with_other_pixel_settings_is_refused(model_dir, contexts, tmp_path):
    out = tmp_path / "ds"
    assert generate(*base(model_dir, contexts, out)).exit_code == 0
    res = generate(*base(model_dir, contexts, out, "--seed", "1"))
    assert res.exit_code == 2 and "seed=42" in res.output.replace(" ", "")
    res = generate(*base(model_dir, contexts, out, "--batch-size", "7"))  # batch size does not change pixels
    assert res.exit_code == 0 and "18 already present" in res.output


def test_negfacediff_takes_its_negatives_from_frbench_identities(model_dir, tmp_path):
    ids = tmp_path / "ids"
    res = CliRunner().invoke(cli, ["identities", "--source", "uniform", "-n", "4", "--negatives", "far",
                                   "--out", str(ids), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    far = json.loads((ids / "identities.json").read_text())["negatives"]["index"]
    common = ["--weights", str(model_dir), "--identities", str(ids), "--per-identity", "2", "--steps", "6"]
    assert generate("--generator", "negfacediff", *common, "--out", str(tmp_path / "neg")).exit_code == 0
    df = pd.read_parquet(tmp_path / "neg" / "manifest.parquet")
    assert (df["negative_row"].to_numpy() == np.repeat(far, 2)).all()
    np.save(tmp_path / "far.npy", np.asarray(far, dtype=np.int64))
    res = generate("--generator", "negfacediff", *common, "--negatives", str(tmp_path / "far.npy"),
                   "--out", str(tmp_path / "neg_file"))
    assert res.exit_code == 0, res.output
    assert digests(tmp_path / "neg_file") == digests(tmp_path / "neg")
    assert generate("--generator", "idiff-face", *common, "--out", str(tmp_path / "plain")).exit_code == 0
    assert digests(tmp_path / "plain") != digests(tmp_path / "neg")


def test_negative_guidance_without_negatives_is_refused(model_dir, contexts, tmp_path):
    res = generate("--generator", "adaptdiff", "--weights", str(model_dir), "--identities", str(contexts),
                   "--out", str(tmp_path / "out"))
    assert res.exit_code == 2 and "--negatives" in res.output and "Traceback" not in res.output


def test_an_images_latent_does_not_depend_on_its_batch(model_dir):
    """Bit-level check before the VQ decoder's quantisation could hide a difference."""
    from fr_bench.generators.base import get_generator

    adapter = get_generator("adaptdiff").from_config({"steps": 6})
    adapter.load(model_dir)
    g = torch.Generator().manual_seed(0)
    ctx = torch.nn.functional.normalize(torch.randn(3, 512, generator=g), dim=1)
    rows = torch.tensor([0, 0, 1, 2, 2])
    seeds = torch.tensor([sample_seed(1, int(i), k) for k, i in enumerate(rows)])
    neg = ctx.flip(0)
    whole = adapter.sample_latents(ctx[rows], seeds, negatives=neg[rows])
    parts = [adapter.sample_latents(ctx[rows[s]], seeds[s], negatives=neg[rows[s]])
             for s in (slice(0, 2), slice(2, 4), slice(4, 5))]
    assert torch.equal(torch.cat(parts), whole)
    order = torch.tensor([4, 1, 3, 0, 2])
    assert torch.equal(adapter.sample_latents(ctx[rows[order]], seeds[order], negatives=neg[rows[order]]), whole[order])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_gives_the_eager_latents(model_dir):
    from fr_bench.generators.base import get_generator

    eager, graphed = (get_generator("negfacediff").from_config({"steps": 6, "cuda_graph": g}) for g in (False, True))
    for a in (eager, graphed):
        a.load(model_dir, device="cuda", dtype=torch.bfloat16)
    ctx = torch.nn.functional.normalize(torch.randn(4, 512), dim=1)
    seeds = torch.arange(4)
    want = eager.sample_latents(ctx, seeds, negatives=ctx.flip(0))
    for _ in range(2):  # the second call replays the captured graph with new inputs copied in
        torch.testing.assert_close(graphed.sample_latents(ctx, seeds, negatives=ctx.flip(0)), want, rtol=0, atol=1e-3)
    other = graphed.sample_latents(ctx.roll(1, 0), seeds, negatives=ctx)
    torch.testing.assert_close(other, eager.sample_latents(ctx.roll(1, 0), seeds, negatives=ctx), rtol=0, atol=1e-3)


@pytest.mark.parametrize("name,guidance,w", [("idiff-face", "none", 0.0), ("negfacediff", "negative", 0.5),
                                             ("adaptdiff", "linear", 1.0)])
def test_presets_are_valid_configs_for_their_adapter(name, guidance, w):
    from fr_bench.config import load_config
    from fr_bench.generators.base import get_generator

    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.generate.generator == name
    adapter = get_generator(name).from_config(cfg.generate.options)
    assert (adapter.options.guidance, adapter.options.w, adapter.options.sampler) == (guidance, w, "ddpm")
    assert adapter.needs_negatives == (w != 0)


def test_unknown_generator_option_is_a_config_error_with_a_suggestion():
    from fr_bench.errors import ConfigError
    from fr_bench.generators.base import get_generator

    with pytest.raises(ConfigError, match="did you mean 'sampler'"):
        get_generator("idiff-face").from_config({"samplr": "ddim"})
