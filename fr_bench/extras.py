"""Optional dependencies, grouped as pip extras that fit the jobs.

The base install scores models and datasets (eval, IJB, separability, tracking, leaderboard);
``[generate]`` adds the diffusion stack, ``[diversity]`` the LPIPS / FID / precision-recall
packages, ``[align]`` names the MTCNN set-up. A command that needs a missing one says, in one line,
what to install — never an ImportError traceback.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from types import ModuleType

from .errors import ConfigError

#: extra → the modules it brings (import name) and what the user gets
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "generate": (("diffusers", "transformers", "safetensors"), "generation with the SD1.5 adapters (Arc2Face, fused attention), train-adapter"),
    "diversity": (("lpips", "torch_fidelity"), "intra-class LPIPS, FID and improved precision/recall"),
    # insightface is also a base dependency (ONNX model routing, IJB crops); the MTCNN package cannot be
    # an extra (its metadata pins an old torch): 'pip install --no-deps facenet-pytorch'
    "align": (("insightface", "facenet_pytorch"), "ONNX detectors (SCRFD/RetinaFace) and MTCNN alignment"),
}
#: import name → extra
MODULE_EXTRA = {mod: extra for extra, (mods, _) in EXTRAS.items() for mod in mods}


def install_hint(module: str) -> str:
    extra = MODULE_EXTRA.get(module)
    if module == "facenet_pytorch":
        return "pip install --no-deps facenet-pytorch"
    return f"pip install 'frbench[{extra}]'" if extra else f"pip install {module}"


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` (e.g. ``diffusers.models``) or raise one ConfigError naming the extra to install."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"{what} needs the '{top}' package, which is not installed ({type(err).__name__}); "
                          f"run: {install_hint(top)}") from None


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it when its spec is enough)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def extra_status() -> dict[str, dict[str, object]]:
    """For ``frbench doctor``: each extra, whether all its modules are there, and their versions."""
    out: dict[str, dict[str, object]] = {}
    for extra, (mods, purpose) in EXTRAS.items():
        versions = {m: _version(m) if installed(m) else None for m in mods}
        out[extra] = {"installed": all(v is not None for v in versions.values()), "modules": versions, "for": purpose}
    return out


def dist_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _version(module: str) -> str:
    return dist_version({"torch_fidelity": "torch-fidelity"}.get(module, module)) or "installed"
