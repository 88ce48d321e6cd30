"""A PyTorch backbone as an :class:`~fr_bench.embed.Embedder`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..embed import Embedder

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | None) -> torch.device:
    """``auto``/None picks CUDA when present; ``cpu``, ``cuda``, ``cuda:N`` are checked against this machine."""
    from ..errors import ConfigError

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {device}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine (pass --device cpu)")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


class TorchEmbedder(Embedder):
    """Runs a backbone in eval mode; mixed precision via autocast, embeddings returned in fp32."""

    def __init__(
        self,
        model: torch.nn.Module,
        path: str | Path,
        arch: str,
        dim: int,
        device: str | None = "auto",
        dtype: str = "fp32",
        batch_size: int = 256,
    ):
        self.device = resolve_device(device)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
        self.dtype = dtype
        self.model = model.eval().to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.path = Path(path)
        self.arch = arch
        self.dim = dim
        self.batch_size = batch_size

    @property
    def description(self) -> str:
        return f"iresnet {self.arch} ({self.path.name}, {self.dtype}, {self.device.type})"

    @torch.inference_mode()
    def _forward(self, batch: np.ndarray, flip: bool) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().sub_(127.5).div_(127.5)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if flip:
            x = torch.cat([x, x.flip(3)])
        with torch.autocast(self.device.type, dtype=DTYPES[self.dtype], enabled=self.dtype != "fp32"):
            y = self.model(x).float()
        if flip:
            n = len(batch)
            y = y[:n] + y[n:]
        return y.cpu().numpy()
