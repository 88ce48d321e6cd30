"""FID and Improved Precision/Recall against a real reference set, via ``torch-fidelity``.

frbench decodes the images itself (threaded, streaming) and hands uint8 batches to
torch-fidelity's own feature extractors and metric functions, so the numbers are torch-fidelity's.
Convention kept from torch-fidelity's ``prc``: the first input is *generated*, the second *real*
(precision = share of generated samples inside the real manifold; recall the reverse).

Extractor weights are always passed as a local file (``metrics.inception_weights`` /
``metrics.vgg16_weights`` in the config, else the torch hub cache); they are checked to load as a
plain state dict before torch-fidelity (which unpickles with ``weights_only=False``) sees them.
Without the file, one line says which file to put where; nothing is ever downloaded.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from ..errors import ConfigError
from .diversity import find_weights, load_state

#: extractor name → (hub-cache file name, download URL, config key)
EXTRACTORS = {
    "inception-v3-compat": (
        "weights-inception-2015-12-05-6726825d.pth",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
        "inception_weights",
    ),
    "vgg16": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth", "vgg16_weights"),
}


def find_extractor_weights(name: str, configured: dict[str, Optional[Path]]) -> Path:
    """Local weights of a torch-fidelity extractor; InputError naming the file and where it goes."""
    if name not in EXTRACTORS:
        raise ConfigError(f"feature extractor '{name}' is not supported (choose {', '.join(EXTRACTORS)})")
    file, url, key = EXTRACTORS[name]
    return find_weights(configured.get(key), file, url, f"{name} feature-extractor", key)


def feature_layer(name: str, metric: str, layer: Optional[str] = None) -> str:
    """The configured layer (checked against the extractor's list) or torch-fidelity's default."""
    from ..extras import require

    require("torch_fidelity", "FID and improved precision/recall (--fid, --prc)")
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    if layer is None:
        return cls.get_default_feature_layer_for_metric(metric)
    provided = list(cls.get_provided_features_list())
    if layer not in provided:
        raise ConfigError(f"metrics.{metric}_layer '{layer}' is not a {name} feature (choose {', '.join(provided)})")
    return layer


def load_extractor(name: str, layers: list[str], weights: Path, device: torch.device) -> torch.nn.Module:
    """A torch-fidelity feature extractor with weights from ``weights`` (never the network)."""
    from torch_fidelity.utils import create_feature_extractor

    load_state(weights, f"{name} feature-extractor")  # refuse files that need code execution
    try:
        with redirect_stdout(io.StringIO()):
            fe = create_feature_extractor(name, layers, cuda=False, feature_extractor_weights_path=str(weights), verbose=False)
    except RuntimeError as err:
        from ..errors import InputError

        raise InputError(weights, f"does not fit the {name} extractor ({str(err).splitlines()[0][:160]})") from None
    return fe.to(device)


@torch.no_grad()
def extract(fe: torch.nn.Module, batches: Iterable[np.ndarray], device: torch.device,
            advance: Optional[Callable[[int], None]] = None) -> dict[str, torch.Tensor]:
    """Features (CPU float32) of uint8 ``B×H×W×3`` batches, keyed by layer name."""
    out: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).contiguous().to(device)
        feats = fe.convert_features_tuple_to_dict(fe(x))
        for k, v in feats.items():
            out.setdefault(k, []).append(v.cpu())
        if advance is not None:
            advance(len(batch))
    return {k: torch.cat(v) for k, v in out.items()}


def fid_from_features(generated: torch.Tensor, real: torch.Tensor) -> float:
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    if len(generated) < 2 or len(real) < 2:
        raise ConfigError(f"FID needs at least 2 images per set (generated {len(generated)}, reference {len(real)})")
    s1, s2 = fid_features_to_statistics(generated), fid_features_to_statistics(real)
    return float(fid_statistics_to_metric(s1, s2, False)["frechet_inception_distance"])


def prc_from_features(generated: torch.Tensor, real: torch.Tensor, k: int, batch_size: int = 10000) -> dict[str, float]:
    """torch-fidelity ``prc``: generated first, real second."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    if min(len(generated), len(real)) < k + 1:
        raise ConfigError(f"precision/recall with K={k} needs more than {k} images per set "
                          f"(generated {len(generated)}, reference {len(real)})")
    m = prc_features_to_metric(generated, real, prc_neighborhood=k, prc_batch_size=batch_size,
                               save_cpu_ram=len(generated) + len(real) > 20000, verbose=False)
    return {"precision": float(m["precision"]), "recall": float(m["recall"]), "f_score": float(m["f_score"])}


@dataclass
class FidelityPlan:
    fid_extractor: Optional[str]
    prc_extractor: Optional[str]
    prc_k: int
    weights: dict[str, Path]  # extractor → file
    fid_layer: Optional[str] = None  # None: torch-fidelity's default ('2048' for inception)
    prc_layer: Optional[str] = None


def compute_fidelity(plan: FidelityPlan, generated: Callable[[], Iterable[np.ndarray]], real: Callable[[], Iterable[np.ndarray]],
                     device: torch.device, progress: Optional[Callable[[str, int], Callable[[int], None]]] = None,
                     counts: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """FID and/or precision/recall; each extractor runs once over both sets."""
    needs: dict[str, set[str]] = {}
    fid_layer = feature_layer(plan.fid_extractor, "fid", plan.fid_layer) if plan.fid_extractor else None
    prc_layer = feature_layer(plan.prc_extractor, "prc", plan.prc_layer) if plan.prc_extractor else None
    if plan.fid_extractor:
        needs.setdefault(plan.fid_extractor, set()).add(fid_layer)  # type: ignore[arg-type]
    if plan.prc_extractor:
        needs.setdefault(plan.prc_extractor, set()).add(prc_layer)  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    for name, layers in needs.items():
        fe = load_extractor(name, sorted(layers), plan.weights[name], device)
        f_gen = extract(fe, generated(), device, progress(f"{name} generated", counts[0]) if progress else None)
        f_real = extract(fe, real(), device, progress(f"{name} reference", counts[1]) if progress else None)
        if plan.fid_extractor == name:
            out["fid"] = fid_from_features(f_gen[fid_layer], f_real[fid_layer])
            out["fid_info"] = {"extractor": name, "layer": fid_layer, "weights": str(plan.weights[name])}
        if plan.prc_extractor == name:
            out["prc"] = {**prc_from_features(f_gen[prc_layer], f_real[prc_layer], plan.prc_k), "k": plan.prc_k,
                          "extractor": name, "layer": prc_layer, "weights": str(plan.weights[name])}
        del fe
    return out
