"""Identity consistency: cosine between each image's FR embedding and its conditioning identity.

Arc2Face (Fig. 4) reports how close generated faces stay to the identity vector they were made
from. The number depends on the FR model (use the one that produced the contexts) and is only
defined for images whose manifest row names a ``context_row``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..embed import l2_normalize
from ..errors import InputError


@dataclass
class ConsistencyResult:
    mean: float
    std: float  # population std
    min: float
    max: float
    images: int
    histogram: Optional[dict[str, np.ndarray]] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("histogram")
        return d


def load_contexts(path: str | Path, dim: int, model: str | Path | None = None) -> np.ndarray:
    """An ``N×dim`` float ``.npy`` of identity contexts, read without pickle."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "identity-contexts file not found")
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise InputError(path, "contexts file holds pickled objects; frbench reads plain numeric .npy only") from None
        raise InputError(path, f"not a readable .npy array ({str(err).splitlines()[0][:120]})") from None
    except OSError as err:
        raise InputError(path, f"cannot read contexts ({err})") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise InputError(path, f"contexts must be a 2-D float array, got shape {arr.shape} dtype {arr.dtype}")
    if arr.shape[1] != dim:
        who = f"the FR model {model}" if model is not None else "the FR model"
        raise InputError(path, f"contexts are {arr.shape[1]}-d but {who} gives {dim}-d embeddings; "
                               "use the FR model the identity contexts were made with")
    return arr


def identity_consistency(embeddings: np.ndarray, contexts: np.ndarray, bins: int = 100) -> ConsistencyResult:
    """Cosine of row i of ``embeddings`` with row i of ``contexts`` (both raw; normalised here)."""
    if len(embeddings) == 0:
        raise ValueError("no images with a conditioning context")
    e = l2_normalize(embeddings)
    c = l2_normalize(np.asarray(contexts, dtype=np.float64))
    cos = np.einsum("ij,ij->i", e, c)
    counts, edges = np.histogram(cos, bins=bins, range=(-1.0, 1.0))
    return ConsistencyResult(float(cos.mean()), float(cos.std()), float(cos.min()), float(cos.max()), len(cos),
                             {"edges": edges, "counts": counts, "values": cos})


class ConsistencyMetric:
    """Streaming form: ``update(embeddings, contexts)`` per batch, ``compute()`` at the end."""

    def __init__(self) -> None:
        self._e: list[np.ndarray] = []
        self._c: list[np.ndarray] = []

    def update(self, embeddings: np.ndarray, contexts: np.ndarray) -> None:
        if len(embeddings) != len(contexts):
            raise ValueError("one context per embedding")
        self._e.append(np.asarray(embeddings, np.float64))
        self._c.append(np.asarray(contexts, np.float64))

    def compute(self) -> ConsistencyResult:
        if not self._e:
            raise ValueError("compute() before any update()")
        return identity_consistency(np.concatenate(self._e), np.concatenate(self._c))
