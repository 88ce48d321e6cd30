"""Shared fixtures: tiny real artefacts built in the formats frbench reads."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

os.environ.setdefault("FRBENCH_NO_PROGRESS", "1")
torch.set_num_threads(2)


def invoke(*args: object):
    """``frbench ARGS…`` in-process (click's runner), every argument as a string."""
    from click.testing import CliRunner

    from fr_bench.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], obj={})


def one_error_line(res) -> str:
    """The one ``error:`` line of a refused command (exit 2, no traceback)."""
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    return errors[0]


def jpeg_bytes(img: np.ndarray, quality: int = 95) -> bytes:
    """Encode an RGB uint8 image as JPEG bytes (as insightface's packers store them)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def face_like_images(n: int, seed: int = 0, size: int = 112) -> list[np.ndarray]:
    """Smooth random RGB images (JPEG-friendly), one per index."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        out.append(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC))
    return out


@pytest.fixture(scope="session")
def tiny_iresnet_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An arcface_torch-layout iresnet r18 state dict with a 32-d embedding."""
    from fr_bench.models.iresnet import iresnet

    torch.manual_seed(0)
    model = iresnet("r18", num_features=32).eval()
    # non-trivial BN statistics so eval-mode outputs are not degenerate; fan-in scaled convs keep
    # activations O(1) (the reference N(0, 0.1) init explodes without training)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("models") / "r18.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_onnx_path(tiny_iresnet_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same r18 exported to ONNX with a dynamic batch axis (insightface model-zoo layout)."""
    from fr_bench.models.iresnet import iresnet

    model = iresnet("r18", num_features=32)
    model.load_state_dict(torch.load(tiny_iresnet_path, weights_only=True))
    model.eval()
    path = tmp_path_factory.mktemp("onnx") / "r18.onnx"
    torch.onnx.export(
        model, torch.zeros(1, 3, 112, 112), str(path), input_names=["input.1"], output_names=["fc1"],
        dynamic_axes={"input.1": {0: "batch"}, "fc1": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    return path


@pytest.fixture(scope="session")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with tiny lfw.bin and cfp_fp.bin packs of real JPEG bytes."""
    from fr_bench.data.binfile import write_pack

    d = tmp_path_factory.mktemp("bins")
    for name, pairs, seed in (("lfw", 40, 1), ("cfp_fp", 30, 2)):
        imgs = face_like_images(2 * pairs, seed=seed)
        rng = np.random.default_rng(seed)
        issame = rng.random(pairs) < 0.5
        for k in range(pairs):  # genuine pairs: second image is a perturbed copy of the first
            if issame[k]:
                noise = rng.integers(-12, 13, imgs[2 * k].shape)
                imgs[2 * k + 1] = np.clip(imgs[2 * k].astype(int) + noise, 0, 255).astype(np.uint8)
        write_pack(d / f"{name}.bin", [jpeg_bytes(i) for i in imgs], list(issame))
    return d
