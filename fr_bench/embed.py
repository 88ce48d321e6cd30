"""Batched embedding extraction shared by every scorer (benchmarks, metrics, identities).

Images go in as uint8 RGB ``N×112×112×3`` arrays; raw (unnormalised) float32 embeddings come out.
Preprocessing is the arcface convention, (x − 127.5)/127.5. With ``flip=True`` the embedding of the
image and of its horizontal mirror are *summed raw*, as insightface's evaluation does; callers
normalise afterwards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

ProgressFn = Callable[[int], None]

INPUT_SIZE = 112


class Embedder(ABC):
    """A face-recognition model behind one ``embed()`` API."""

    #: where the weights came from
    path: Path
    #: embedding width
    dim: int
    #: default batch size
    batch_size: int = 256

    @property
    @abstractmethod
    def description(self) -> str:
        """Short human-readable name, e.g. ``iresnet r50 (model.pt)``."""

    @abstractmethod
    def _forward(self, batch: np.ndarray, flip: bool) -> np.ndarray:
        """Embed one uint8 NHWC batch; return float32 ``[n, dim]`` (flip-summed if asked)."""

    def embed(
        self,
        images: np.ndarray,
        *,
        flip: bool = False,
        batch_size: int | None = None,
        progress: ProgressFn | None = None,
    ) -> np.ndarray:
        """Embed ``images`` (uint8 ``N×112×112×3`` RGB) → float32 ``N×dim`` raw embeddings."""
        check_images(images)
        bs = batch_size or self.batch_size
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), bs):
            chunk = images[start : start + bs]
            out[start : start + len(chunk)] = self._forward(np.ascontiguousarray(chunk), flip)
            if progress is not None:
                progress(len(chunk))
        return out

    def embed_stream(
        self, batches: Iterable[np.ndarray], *, flip: bool = False, progress: ProgressFn | None = None
    ) -> Iterator[np.ndarray]:
        """Embed an iterable of uint8 batches lazily (for datasets that do not fit in memory)."""
        for batch in batches:
            yield self.embed(batch, flip=flip, progress=progress)


def check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError("images must be a uint8 numpy array")
    if images.ndim != 4 or images.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ValueError(f"images must be N×{INPUT_SIZE}×{INPUT_SIZE}×3 RGB, got {images.shape}")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float64 (rows of zeros stay zero, as sklearn's ``normalize``)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms < eps] = 1.0
    return x / norms[:, None]
