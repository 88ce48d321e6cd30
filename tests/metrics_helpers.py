"""Tiny real artefacts for the metrics tests: image-folder datasets and metric-backbone weight files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pytest
import torch


def write_dataset(root: Path, n_id: int, per: int, *, size: tuple[int, int] = (128, 128), seed: int = 0,
                  manifest: bool = True, contexts_dim: Optional[int] = None, ext: str = ".png", noise: int = 25) -> Path:
    """``root/<i:05d>/<k:03d>.png`` — per identity a smooth base image plus noise (so identities differ)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_id):
        os.makedirs(root / f"{i:05d}", exist_ok=True)
        base = cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
        for k in range(per):
            img = np.clip(base.astype(int) + rng.integers(-noise, noise + 1, base.shape), 0, 255).astype(np.uint8)
            rel = f"{i:05d}/{k:03d}{ext}"
            assert cv2.imwrite(str(root / rel), img)
            rows.append((i, k, 1000 * i + k, rel, i))
    if manifest:
        import pandas as pd

        pd.DataFrame(rows, columns=["identity", "sample", "seed", "path", "context_row"]).to_parquet(root / "manifest.parquet", index=False)
    if contexts_dim is not None:
        np.save(root / "contexts.npy", rng.normal(size=(n_id, contexts_dim)).astype(np.float32))
    return root


def save_random_vgg16(path: Path, seed: int = 0) -> Path:
    """A torchvision-layout VGG16 state dict (``features.*`` random; a stand-in classifier key, ignored)."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(seed)
    features = make_layers(cfgs["D"])
    for m in features.modules():  # torchvision's VGG init; the default one shrinks activations into denormals
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.bias"] = torch.zeros(4096)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def save_random_inception(path: Path, seed: int = 0) -> Path:
    """torch-fidelity's inception-v3-compat with random weights, saved as its state dict."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path.parent.mkdir(parents=True, exist_ok=True)
    empty = path.parent / "empty-state.pth"
    torch.save({}, empty)
    original = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None  # keep the random init
    try:
        torch.manual_seed(seed)
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    finally:
        FeatureExtractorInceptionV3.load_state_dict = original
    with torch.no_grad():  # He init keeps activations O(1) (the default init decays into denormals)
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    torch.save(model.state_dict(), path)
    empty.unlink()
    return path


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TORCH_HOME whose hub cache holds random VGG16 and inception weights under the real names."""
    home = tmp_path_factory.mktemp("torch_home")
    ckpt = home / "hub" / "checkpoints"
    save_random_vgg16(ckpt / "vgg16-397923af.pth")
    save_random_inception(ckpt / "weights-inception-2015-12-05-6726825d.pth")
    return home


@pytest.fixture()
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to fetch weights."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"attempted download: {args[:1]}")

    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
    import torchvision.models._api as tv_api

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", refuse)
    if hasattr(tv_api, "load_state_dict_from_url"):
        monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse)
