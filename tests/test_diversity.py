"""Intra-class LPIPS equals the ``lpips`` package called directly; weights only from local files."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from fr_bench.errors import InputError
from fr_bench.metrics.diversity import (
    VGG16_FILE,
    IntraClassLPIPS,
    choose_identities,
    find_weights,
    intra_class_lpips,
    load_lpips_vgg,
)
from metrics_helpers import no_download, save_random_vgg16, torch_home  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def lpips_model(torch_home: Path) -> torch.nn.Module:
    return load_lpips_vgg(torch_home / "hub" / "checkpoints" / VGG16_FILE)


def reference_lpips(weights: Path) -> torch.nn.Module:
    """The package's own model: LPIPS(net='vgg') with the trunk taken from the same file by index."""
    import lpips

    with redirect_stdout(io.StringIO()):
        model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    state = torch.load(weights, weights_only=True)
    for s in range(1, 6):
        sl = getattr(model.net, f"slice{s}")
        for name, layer in sl.named_children():
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.data.copy_(state[f"features.{name}.weight"])
                layer.bias.data.copy_(state[f"features.{name}.bias"])
    return model.eval()


def images(n: int, seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_pairwise_lpips_equals_the_package_on_the_same_pairs(torch_home: Path, lpips_model: torch.nn.Module) -> None:
    import lpips

    ref = reference_lpips(torch_home / "hub" / "checkpoints" / VGG16_FILE)
    imgs = images(4, 0)
    got = IntraClassLPIPS(lpips_model, pair_batch=4, trunk_batch=3).pair_distances(imgs)
    expected = []
    for i in range(4):
        for j in range(i + 1, 4):
            a, b = (lpips.im2tensor(imgs[k]) for k in (i, j))  # [-1, 1], NCHW
            with torch.no_grad():
                expected.append(float(ref(a, b)))
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert len(set(np.round(got, 6))) == len(got)  # distinct pairs, distinct values


def test_mean_pools_all_pairs_of_all_identities(lpips_model: torch.nn.Module) -> None:
    groups = [images(2, 1), images(3, 2)]
    res = intra_class_lpips(lpips_model, groups)
    metric = IntraClassLPIPS(lpips_model)
    per = [metric.pair_distances(g) for g in groups]
    pooled = np.concatenate(per)
    assert res.pairs == 1 + 3 and res.identities == 2
    assert res.mean == pytest.approx(pooled.mean()) and res.std == pytest.approx(pooled.std())
    assert res.identity_mean_std == pytest.approx(np.std([p.mean() for p in per]))
    assert res.image_size == [32, 32]


def test_identity_choice_is_seeded_and_without_repeats() -> None:
    a, b, c = choose_identities(1000, 100, 0), choose_identities(1000, 100, 0), choose_identities(1000, 100, 1)
    assert (a == b).all() and not (a == c).all()
    assert len(np.unique(a)) == 100 and (np.diff(a) > 0).all()
    assert (choose_identities(7, 100, 0) == np.arange(7)).all()


def test_missing_vgg16_weights_name_the_file_and_where_it_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                no_download: None) -> None:  # noqa: F811
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(InputError) as err:
        find_weights(None, VGG16_FILE, "https://download.pytorch.org/models/vgg16-397923af.pth", "LPIPS VGG16", "vgg16_weights")
    msg = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / VGG16_FILE) in msg and "vgg16-397923af.pth" in msg
    assert "metrics.vgg16_weights" in msg and "\n" not in msg


def test_configured_weights_path_is_used_and_a_pickle_with_code_is_refused(tmp_path: Path, no_download: None) -> None:  # noqa: F811
    good = save_random_vgg16(tmp_path / "my_vgg.pth", seed=3)
    assert find_weights(good, VGG16_FILE, "u", "LPIPS VGG16", "vgg16_weights") == good
    load_lpips_vgg(good)  # loads from the file, builds the trunk untrained: no download

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pth"
    torch.save({"features.0.weight": Evil()}, bad)
    with pytest.raises(InputError, match="not a loadable"):
        load_lpips_vgg(bad)
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, wrong)
    with pytest.raises(InputError, match="not a torchvision VGG16 state dict"):
        load_lpips_vgg(wrong)
