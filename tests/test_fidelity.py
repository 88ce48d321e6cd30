"""FID and precision/recall are torch-fidelity's own numbers, with generated = input1, real = input2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fr_bench.data.dataset import iter_batches
from fr_bench.errors import ConfigError, InputError
from fr_bench.metrics.fidelity import FidelityPlan, compute_fidelity, find_extractor_weights, prc_from_features
from metrics_helpers import no_download, torch_home, write_dataset  # noqa: F401  (fixtures)

INCEPTION = "weights-inception-2015-12-05-6726825d.pth"


def literal_precision_recall(gen: np.ndarray, real: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al.: a sample is inside a set's manifold if it lies within the k-th-neighbour
    radius (self excluded) of any member; precision = generated inside real, recall = real inside generated."""

    def radii(x: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def inside(a: np.ndarray, b: np.ndarray) -> float:
        d = np.linalg.norm(a[:, None] - b[None], axis=-1)
        return float((d <= radii(b)[None]).any(axis=1).mean())

    return inside(gen, real), inside(real, gen)


def test_precision_is_generated_inside_real_and_recall_the_reverse() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 8))
    gen = 0.4 * rng.normal(size=(50, 8)) + 0.8  # narrow and shifted: high precision, low recall
    p, r = literal_precision_recall(gen, real, 3)
    got = prc_from_features(torch.from_numpy(gen).float(), torch.from_numpy(real).float(), 3)
    assert got["precision"] == pytest.approx(p) and got["recall"] == pytest.approx(r)
    assert abs(p - r) > 0.2  # a swapped order would be caught


def test_default_layers_are_torch_fidelitys_and_unknown_layers_are_refused() -> None:
    from fr_bench.metrics.fidelity import feature_layer

    assert feature_layer("inception-v3-compat", "fid") == "2048"
    assert feature_layer("vgg16", "prc") == "fc2_relu"
    with pytest.raises(ConfigError, match="metrics.prc_layer 'pool9'"):
        feature_layer("inception-v3-compat", "prc", "pool9")


def test_prc_needs_more_samples_than_k() -> None:
    with pytest.raises(ConfigError, match="K=10"):
        prc_from_features(torch.zeros(8, 4), torch.zeros(30, 4), 10)


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fidelity")
    gen = write_dataset(root / "gen", 2, 3, size=(40, 40), seed=1, manifest=False)
    real = write_dataset(root / "real", 3, 2, size=(48, 48), seed=2, manifest=False)
    return gen, real


def test_fid_and_prc_equal_torch_fidelity_called_directly(image_sets: tuple[Path, Path], torch_home: Path,
                                                          no_download: None) -> None:  # noqa: F811
    import torch_fidelity

    gen_dir, real_dir = image_sets
    weights = torch_home / "hub" / "checkpoints" / INCEPTION
    gen = sorted(gen_dir.rglob("*.png"))
    real = sorted(real_dir.rglob("*.png"))
    # the '64' layer (after the stem): the real extractor and code path at a fraction of the cost of '2048'
    plan = FidelityPlan("inception-v3-compat", "inception-v3-compat", 2, {"inception-v3-compat": weights},
                        fid_layer="64", prc_layer="64")
    ours = compute_fidelity(plan, lambda: iter_batches(gen, 4, size=None, workers=1),
                            lambda: iter_batches(real, 4, size=None, workers=1), torch.device("cpu"))
    ref = torch_fidelity.calculate_metrics(
        input1=str(gen_dir), input2=str(real_dir), samples_find_deep=True, fid=True, prc=True, prc_neighborhood=2,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(weights),
        feature_layer_fid="64", feature_layer_prc="64",
        cuda=False, cache=False, verbose=False, save_cpu_ram=True, batch_size=4,
    )
    assert ours["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)
    assert ours["prc"]["precision"] == pytest.approx(ref["precision"])
    assert ours["prc"]["recall"] == pytest.approx(ref["recall"])
    assert ours["prc"]["k"] == 2 and ours["fid_info"]["layer"] == "64"


def test_missing_extractor_weights_say_which_file_goes_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             no_download: None) -> None:  # noqa: F811
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(InputError) as err:
        find_extractor_weights("inception-v3-compat", {})
    msg = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / INCEPTION) in msg
    assert "github.com/toshas/torch-fidelity/releases" in msg and "metrics.inception_weights" in msg
    with pytest.raises(InputError, match="metrics.vgg16_weights"):
        find_extractor_weights("vgg16", {"vgg16_weights": tmp_path / "nope.pth"})
