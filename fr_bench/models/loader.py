"""Open any supported face-recognition model file as an :class:`~fr_bench.embed.Embedder`."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..embed import Embedder
from ..errors import InputError
from .iresnet import LAYOUTS, infer_arch, iresnet
from .irse import build_irse, is_irse_state_dict
from .onnx_model import OnnxEmbedder
from .torch_model import TorchEmbedder

_WRAPPER_KEYS = ("state_dict", "model", "backbone", "model_state_dict")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a backbone state dict without executing pickled code (``weights_only=True``).

    Accepts plain state dicts, ``{"state_dict"|"model"|"backbone": ...}`` wrappers and DDP's
    ``module.`` prefix.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        from ..io import torch_load_problem

        msg = torch_load_problem(err)
        if msg.startswith("unsafe pickle"):
            raise InputError(path, msg) from None
        raise InputError(path, f"not an ONNX model or a PyTorch state dict ({msg})") from None
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(path, "not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def build_iresnet(path: str | Path, state: dict[str, torch.Tensor], arch: str | None = None) -> tuple[torch.nn.Module, str, int]:
    """Build the iresnet the state dict describes and load it strictly."""
    path = Path(path)
    found = infer_arch(state)
    if arch is None:
        if found is None:
            sample = ", ".join(sorted(state)[:3])
            raise InputError(path, f"not an arcface_torch iresnet state dict (keys start: {sample})")
        arch = found
    arch = arch.lower().replace("iresnet", "r")
    if arch not in LAYOUTS:
        raise InputError(path, f"unknown arch {arch!r}; known: {', '.join(LAYOUTS)}")
    if "fc.weight" not in state:
        raise InputError(path, "state dict has no 'fc.weight': not an arcface_torch iresnet")
    dim = int(state["fc.weight"].shape[0])
    model = iresnet(arch, num_features=dim)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys ({', '.join(missing[:3])}…)")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys ({', '.join(unexpected[:3])}…)")
        hint = f"; it looks like {found}" if found and found != arch else ""
        raise InputError(path, f"state dict does not match iresnet {arch}: {'; '.join(parts)}{hint}")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise InputError(path, f"state dict does not match iresnet {arch}: {k} has shape {list(state[k].shape)}, expected {list(v.shape)}")
    model.load_state_dict(state, strict=True)
    return model, arch, dim


def _looks_like_onnx(path: Path) -> bool:
    if path.suffix.lower() == ".onnx":
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    # torch's zip format and legacy pickles are recognisable; everything else gets a try as ONNX.
    return not (head.startswith(b"PK") or head[:1] == b"\x80")


def load_fr_model(
    path: str | Path,
    *,
    device: str | None = "auto",
    dtype: str = "fp32",
    batch_size: int = 256,
    arch: str | None = None,
) -> Embedder:
    """Load an insightface ONNX file or an arcface_torch iresnet state dict.

    Raises :class:`InputError` (one line naming the file) for anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "model file not found")
    if _looks_like_onnx(path):
        try:
            return OnnxEmbedder(path, device=device, batch_size=batch_size)
        except InputError as err:
            if path.suffix.lower() != ".onnx" and "not a readable ONNX model" in err.problem:
                raise InputError(path, "not an ONNX model or a PyTorch state dict") from err
            raise
    state = load_state_dict(path)
    if arch is None and is_irse_state_dict(state):  # IR-SE (AdaFace layout), e.g. frbench's arc2face recipe
        model, arch, dim = build_irse(path, state)
    else:
        model, arch, dim = build_iresnet(path, state, arch)
    return TorchEmbedder(model, path, arch, dim, device=device, dtype=dtype, batch_size=batch_size)
