"""Intra-class diversity: mean LPIPS over all image pairs within each of a seeded set of identities.

Uses the ``lpips`` package (VGG trunk, version 0.1 linear layers shipped in its wheel, inputs in
[−1, 1], spatial average), as UIFace's Table 2 reports it. The VGG16 trunk weights are
torchvision's ImageNet file ``vgg16-397923af.pth``; frbench never lets torchvision fetch it: the
trunk is built untrained and the file is loaded from a local path (config ``metrics.vgg16_weights``
or the torch hub cache). Each image's VGG features are computed once and reused for all its pairs
— the same arithmetic as ``lpips.LPIPS.forward``, 2·C(n,2)/n times fewer trunk passes.
"""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch

from ..errors import InputError

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


def hub_checkpoint(name: str) -> Path:
    """Where torch.hub caches a checkpoint file (``$TORCH_HOME/hub/checkpoints/<name>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def find_weights(configured: Optional[Path], name: str, url: str, what: str, config_key: str) -> Path:
    """The configured file, else the torch hub cache copy; InputError saying where to put it."""
    if configured is not None:
        path = Path(configured)
        if not path.is_file():
            raise InputError(path, f"{what} weights not found (metrics.{config_key}); download {url} to this path")
        return path
    path = hub_checkpoint(name)
    if not path.is_file():
        raise InputError(path, f"{what} weights not found: download {url} to this path "
                               f"(or set metrics.{config_key} in the config); frbench never downloads")
    return path


def load_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A plain state dict loaded without executing pickle code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        from ..io import torch_load_problem

        raise InputError(path, f"not a loadable {what} state dict ({torch_load_problem(err)})") from None
    if not isinstance(state, dict):
        raise InputError(path, f"not a {what} state dict (got {type(state).__name__})")
    return state


def load_lpips_vgg(weights: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """``lpips.LPIPS(net='vgg', version='0.1')`` with its trunk from a local torchvision VGG16 file.

    The module is built on the meta device (no random init of VGG16's 120M-parameter classifier,
    which LPIPS drops anyway, and no download path at all), then every tensor is loaded strictly:
    the trunk from ``weights``, the linear layers from the file shipped in the lpips wheel, the
    scaling constants from a fresh ``lpips.ScalingLayer``.
    """
    from ..extras import require

    lpips = require("lpips", "intra-class LPIPS (--lpips)")

    state = load_state(weights, "torchvision VGG16")
    with redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", UserWarning)  # lpips passes torchvision's deprecated `pretrained=False`
        model = lpips.LPIPS(net="vgg", version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    model = model.to_empty(device="cpu")
    net = model.net
    full: dict[str, torch.Tensor] = {f"scaling_layer.{k}": v for k, v in lpips.ScalingLayer().state_dict().items()}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "features" or len(parts) < 3:
            continue  # the classifier is not part of the LPIPS trunk
        for s in range(1, net.N_slices + 1):
            if hasattr(getattr(net, f"slice{s}"), parts[1]):
                full[f"net.slice{s}.{'.'.join(parts[1:])}"] = value
    lin_file = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    for key, value in torch.load(lin_file, map_location="cpu", weights_only=True).items():
        full[key] = value  # lin0..lin4; the same modules appear again as lins.0..4
        if key.startswith("lin") and key[3].isdigit():
            full[f"lins.{key[3]}{key[4:]}"] = value
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:200]
        raise InputError(weights, f"not a torchvision VGG16 state dict ({detail})") from None
    return model.eval().to(device)


def to_lpips_input(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``N×H×W×3`` RGB → float ``N×3×H×W`` in [−1, 1] (as ``lpips.im2tensor``)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


@dataclass
class LpipsResult:
    mean: float  # over all pairs pooled
    std: float  # population std over pairs
    identity_mean_std: float  # spread of the per-identity means
    pairs: int
    identities: int
    net: str = "vgg"
    version: str = "0.1"
    image_size: Optional[list[int]] = None
    chosen: list[str] = field(default_factory=list)
    seed: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class IntraClassLPIPS:
    """torchmetrics-style: ``update(images_of_one_identity)`` then ``compute()``."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", pair_batch: int = 64,
                 trunk_batch: int = 32):
        self.model = model
        self.device = torch.device(device)
        self.pair_batch = pair_batch
        self.trunk_batch = trunk_batch
        self.values: list[np.ndarray] = []
        self.image_size: Optional[list[int]] = None

    @torch.no_grad()
    def _features(self, images: np.ndarray) -> list[torch.Tensor]:
        import lpips

        outs: list[list[torch.Tensor]] = []
        for s in range(0, len(images), self.trunk_batch):
            x = to_lpips_input(images[s : s + self.trunk_batch], self.device)
            feats = self.model.net.forward(self.model.scaling_layer(x))
            outs.append([lpips.normalize_tensor(f) for f in feats])
        return [torch.cat([o[k] for o in outs]) for k in range(len(outs[0]))]

    @torch.no_grad()
    def pair_distances(self, images: np.ndarray) -> np.ndarray:
        """LPIPS of every pair i < j of ``images`` (row-major order)."""
        import lpips

        n = len(images)
        if n < 2:
            return np.zeros(0)
        feats = self._features(images)
        iu = torch.triu_indices(n, n, offset=1)
        out = []
        for s in range(0, iu.shape[1], self.pair_batch):
            a, b = iu[0, s : s + self.pair_batch].to(self.device), iu[1, s : s + self.pair_batch].to(self.device)
            val = 0
            for k, f in enumerate(feats):
                val = val + lpips.spatial_average(self.model.lins[k]((f[a] - f[b]) ** 2), keepdim=True)
            out.append(val.reshape(-1).double().cpu())
        return torch.cat(out).numpy()

    def update(self, images: np.ndarray) -> None:
        if self.image_size is None:
            self.image_size = [int(images.shape[1]), int(images.shape[2])]
        self.values.append(self.pair_distances(images))

    def compute(self) -> LpipsResult:
        per = [v for v in self.values if len(v)]
        if not per:
            raise ValueError("no identity with at least 2 images")
        allv = np.concatenate(per)
        means = np.array([v.mean() for v in per])
        return LpipsResult(float(allv.mean()), float(allv.std()), float(means.std()), int(allv.size), len(per),
                           image_size=self.image_size)


def choose_identities(n: int, k: int, seed: int) -> np.ndarray:
    """``min(k, n)`` distinct indices of ``range(n)``, seeded, in ascending order."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(k, n), replace=False))


def intra_class_lpips(model: torch.nn.Module, identities: Iterable[np.ndarray], device: str | torch.device = "cpu") -> LpipsResult:
    """Functional form: one uint8 ``n×H×W×3`` array per identity."""
    metric = IntraClassLPIPS(model, device)
    for images in identities:
        metric.update(images)
    return metric.compute()
