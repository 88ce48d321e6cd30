"""An ONNX recognition model as an :class:`~fr_bench.embed.Embedder`.

insightface's model zoo decides whether a file is a recognition model (its router) and which
normalisation it expects (graphs exported from mxnet start with Sub/Mul nodes and take raw pixels).
frbench reuses that routing, then runs the onnxruntime session itself in batches.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from ..embed import INPUT_SIZE, Embedder
from ..errors import InputError


def _providers(device: str | None) -> list:
    """onnxruntime providers for ``device``: ``cpu``; ``cuda`` / ``cuda:N`` (that GPU, via ``device_id``;
    a ConfigError when onnxruntime has no CUDA provider or no such GPU); ``auto`` (GPU 0 when possible)."""
    import re

    import onnxruntime as ort

    from ..errors import ConfigError

    available = ort.get_available_providers()
    dev = str(device or "auto").strip().lower()
    if dev == "cpu":
        return ["CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in available
    if dev == "auto":
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"] if has_cuda else ["CPUExecutionProvider"]
    m = re.fullmatch(r"cuda(?::(\d+))?", dev)
    if m is None:
        raise ConfigError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if not has_cuda:
        raise ConfigError(f"--device {device}: onnxruntime here has no CUDAExecutionProvider (it has {', '.join(available)}); "
                          "install onnxruntime-gpu or pass --device cpu")
    index = int(m.group(1) or 0)
    count = _cuda_count()
    if count is not None and index >= count:
        raise ConfigError(f"--device {device}: this machine has {count} CUDA device(s)")
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def _cuda_count() -> int | None:
    """Visible CUDA devices as torch counts them; None when torch cannot tell (no CUDA build)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover - a broken torch install: let onnxruntime decide
        return None


class OnnxEmbedder(Embedder):
    def __init__(self, path: str | Path, device: str | None = "auto", batch_size: int = 256):
        self.path = Path(path)
        try:
            from insightface.model_zoo import model_zoo
        except ImportError as err:  # pragma: no cover - insightface is a hard dependency
            raise InputError(self.path, f"cannot load ONNX models: {err}") from err
        providers = _providers(device)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the router prints provider chatter
                # the router directly: no suffix rules, no model-pack lookup, never a download
                routed = model_zoo.ModelRouter(str(self.path)).get_model(providers=providers)
        except Exception as err:
            raise InputError(self.path, f"not a readable ONNX model ({type(err).__name__}: {_first_line(err)})") from err
        if routed is None or type(routed).__name__ != "ArcFaceONNX":
            kind = "unrecognised" if routed is None else type(routed).__name__
            raise InputError(self.path, f"ONNX model is not a face-recognition embedder (insightface routes it as {kind})")
        self.session = routed.session
        self.input_name = routed.input_name
        self.input_mean = float(routed.input_mean)
        self.input_std = float(routed.input_std)
        shape = self.session.get_inputs()[0].shape
        if list(shape[2:]) != [INPUT_SIZE, INPUT_SIZE]:
            raise InputError(self.path, f"ONNX input is {shape}, expected N×3×{INPUT_SIZE}×{INPUT_SIZE}")
        # Some exports fix the batch dimension; respect it.
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.batch_size = self.fixed_batch or batch_size
        self.providers = self.session.get_providers()
        probe = self._run(np.zeros((self.fixed_batch or 2, 3, INPUT_SIZE, INPUT_SIZE), np.float32))
        if probe.ndim != 2 or probe.shape[1] < 2:
            raise InputError(self.path, f"ONNX output has shape {list(probe.shape)}, not an N×D embedding")
        self.dim = int(probe.shape[1])

    @property
    def description(self) -> str:
        dev = "cuda" if self.providers[0].startswith("CUDA") else "cpu"
        return f"onnx ({self.path.name}, {dev})"

    def _run(self, blob: np.ndarray) -> np.ndarray:
        if self.fixed_batch is None:
            return np.asarray(self.session.run(None, {self.input_name: blob})[0])
        outs = []
        for i in range(0, len(blob), self.fixed_batch):
            part = blob[i : i + self.fixed_batch]
            pad = self.fixed_batch - len(part)
            if pad:
                part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
            outs.append(np.asarray(self.session.run(None, {self.input_name: part})[0])[: self.fixed_batch - pad])
        return np.concatenate(outs)

    def _forward(self, batch: np.ndarray, flip: bool) -> np.ndarray:
        blob = (batch.transpose(0, 3, 1, 2).astype(np.float32) - self.input_mean) / self.input_std
        out = self._run(np.ascontiguousarray(blob)).astype(np.float32)
        if flip:
            out = out + self._run(np.ascontiguousarray(blob[..., ::-1])).astype(np.float32)
        return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""
