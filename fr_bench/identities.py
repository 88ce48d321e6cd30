"""Identity contexts for identity-conditioned generators: sources, greedy similarity filter, negatives.

An identity context is a unit-norm 512-d face embedding. A *source* yields an ordered stream of
candidates; the greedy filter walks the stream and keeps a candidate only if its cosine to every
identity kept so far is < ``max_similarity`` (Arc2Face/DCFace use 0.3). *Negatives* pick, for each
identity, another identity of a pool for negative guidance (NegFaceDiff/AdaptDiff).

Output: ``identities.npy`` (float32 N×512, unit rows) and ``identities.json`` (source, seed,
threshold, counts, per-identity negative index), both written atomically, the JSON last.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import contextlib
import pickle
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from . import __version__
from .errors import ConfigError, FrBenchError, InputError
from .io import atomic_path, sha256_file, write_json_atomic

CONTEXT_DIM = 512
SOURCES = ("uniform", "pca", "embed", "file")
NEGATIVE_METHODS = ("far", "mid", "rand")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
FORMAT = "frbench-identities/1"

Advance = Callable[[int], None]
ProgressFactory = Callable[[str, int], Advance]


# ----------------------------------------------------------------------------- embedding files
def _numpy_safe_globals() -> list[Any]:
    """Globals a torch-saved dict of numpy arrays needs, and nothing that can run code.

    Files written with numpy 1.x name ``numpy.core.multiarray``; numpy 2 moved it to ``numpy._core``,
    so both spellings are allowed for the same function.
    """
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    reconstruct = multiarray._reconstruct
    allowed: list[Any] = [np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((reconstruct, f"{mod}._reconstruct"))
    frombuffer = getattr(numeric, "_frombuffer", None)
    if frombuffer is not None:
        for mod in ("numpy.core.numeric", "numpy._core.numeric"):
            allowed.append((frombuffer, f"{mod}._frombuffer"))
    for code in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?"):
        allowed.append(type(np.dtype(code)))  # numpy ≥ 1.25 rebuilds dtypes through their classes
    return allowed


def _torch_load_without_code(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with numeric numpy arrays allowed; pickled code is refused."""
    allow = getattr(torch.serialization, "safe_globals", None)  # torch ≥ 2.5; older ones refuse numpy arrays
    try:
        with allow(_numpy_safe_globals()) if allow is not None else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text) or re.search(r"but got (<class '[^']+'>)", text)
        if found:
            raise InputError(path, f"refused to unpickle {found.group(1)}: context files may hold only numeric arrays "
                                   "(nothing in the file was executed)") from None
        raise InputError(path, "not a .npy array or a torch-saved dict of arrays (the pickle was refused, nothing was executed)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise InputError(path, f"not a .npy array or a torch-saved dict of arrays ({first})") from None


def _as_row(value: Any, path: Path, key: str, dim: int) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu" or arr.size != dim or arr.ndim not in (1, 2):
        shape = "×".join(str(s) for s in arr.shape) or "scalar"
        raise InputError(path, f"entry {key!r} has shape {shape}; identity contexts must be {dim}-d vectors")
    return arr.reshape(dim).astype(np.float64)


def load_embedding_file(path: str | Path, dim: int = CONTEXT_DIM) -> tuple[np.ndarray, Optional[list[str]]]:
    """Read ``N×dim`` embeddings (float64, as stored) and their keys (dict files) without running code.

    Accepts a numeric ``.npy`` array (read with ``allow_pickle=False``) and IDiff-Face's context files:
    a ``torch.save``-d dict ``{index: float32[512]}`` (despite the ``.npy`` name), read with
    ``torch.load(weights_only=True)``. Lists/tuples of vectors and tensors are accepted as well.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    with open(path, "rb") as f:
        head = f.read(6)
    keys: Optional[list[str]] = None
    if head == b"\x93NUMPY":
        try:
            obj: Any = np.load(path, allow_pickle=False)
        except ValueError as err:
            if "allow_pickle" in str(err):
                raise InputError(path, "holds pickled Python objects; frbench reads numeric .npy arrays and torch-saved "
                                       "dicts of arrays only (nothing in the file was executed)") from None
            raise InputError(path, f"unreadable .npy ({err})") from None
    else:
        obj = _torch_load_without_code(path)
    if isinstance(obj, dict):
        if not obj:
            raise InputError(path, "the dict holds no contexts")
        keys = [str(k) for k in obj]
        arr = np.stack([_as_row(v, path, k, dim) for k, v in zip(keys, obj.values())])
    elif isinstance(obj, (list, tuple)):
        if not obj:
            raise InputError(path, "holds no contexts")
        arr = np.stack([_as_row(v, path, str(i), dim) for i, v in enumerate(obj)])
    else:
        if isinstance(obj, torch.Tensor):
            obj = obj.detach().cpu().numpy()
        arr = np.asarray(obj)
        if arr.dtype.kind not in "fiu":
            raise InputError(path, f"holds a {arr.dtype} array; expected numbers")
        if arr.ndim != 2 or arr.shape[1] != dim:
            shape = "×".join(str(s) for s in arr.shape)
            raise InputError(path, f"holds a {shape} array; identity contexts must be N×{dim}")
        arr = arr.astype(np.float64)
    if len(arr) == 0:
        raise InputError(path, "holds no contexts")
    if not np.isfinite(arr).all():
        raise InputError(path, f"row {int(np.where(~np.isfinite(arr).all(1))[0][0])} is not finite")
    norms = np.linalg.norm(arr, axis=1)
    if (norms == 0).any():
        raise InputError(path, f"row {int(np.argmin(norms))} has zero norm")
    return arr, keys


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Float64 unit rows (division, so exactly representable inputs stay exact)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------- sources
class Source(ABC):
    """An ordered, deterministic stream of candidate identities (float64 rows, any norm)."""

    name: str
    finite: bool

    @abstractmethod
    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        """Yield candidate rows in blocks of at most ``rows``."""

    def describe(self) -> dict[str, Any]:
        return {}

    def labels(self) -> Optional[list[str]]:
        """Per-candidate labels (dict keys, image paths) for finite sources, else None."""
        return None


class UniformSource(Source):
    """``normalize(randn(512))``: uniform on the unit hypersphere (IDiff-Face "synthetic uniform")."""

    name, finite = "uniform", False

    def __init__(self, seed: int, dim: int = CONTEXT_DIM):
        self.seed, self.dim = seed, dim

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        # numpy's Generator fills row-major, so the stream does not depend on ``rows``
        rng = np.random.default_rng(self.seed)
        while True:
            yield rng.standard_normal((rows, self.dim))


class PcaSource(Source):
    """Gaussian in the PCA space of reference embeddings (Arc2Face): mean + Σ z_j·√λ_j·v_j, z ~ N(0, 1)."""

    name, finite = "pca", False

    def __init__(self, reference: str | Path, seed: int, components: Optional[int] = None, dim: int = CONTEXT_DIM):
        self.reference, self.seed = Path(reference), seed
        ref, _ = load_embedding_file(self.reference, dim)
        if len(ref) < 2:
            raise InputError(self.reference, "needs at least 2 reference embeddings to fit a PCA")
        ref = normalize_rows(ref)
        limit = min(len(ref) - 1, dim)
        if components is not None and components > limit:
            raise ConfigError(f"--pca-components {components}: at most {limit} for {len(ref)} reference embeddings")
        # eigen-decomposition of the D×D covariance: exact, and cheap for millions of rows
        self.mean = ref.mean(axis=0)
        cov = np.zeros((dim, dim))
        for s in range(0, len(ref), 1 << 16):
            c = ref[s : s + (1 << 16)] - self.mean
            cov += c.T @ c
        cov /= len(ref) - 1
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1][: components or limit]
        self.variance = np.clip(evals[order], 0.0, None)
        self.components = evecs[:, order].T
        self.explained = float(self.variance.sum() / max(np.trace(cov), 1e-300))
        self.n_reference = len(ref)

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        scale = np.sqrt(self.variance)
        while True:
            z = rng.standard_normal((rows, len(scale)))
            yield (z * scale) @ self.components + self.mean

    def describe(self) -> dict[str, Any]:
        return {"reference_embeddings": str(self.reference), "reference_sha256": sha256_file(self.reference),
                "reference_count": self.n_reference, "pca_components": len(self.variance),
                "explained_variance_ratio": self.explained}


class FileSource(Source):
    """Contexts read from a file, in file order (see :func:`load_embedding_file`)."""

    name, finite = "file", True

    def __init__(self, path: str | Path, dim: int = CONTEXT_DIM):
        self.path = Path(path)
        self.data, self.keys = load_embedding_file(self.path, dim)

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.data), rows):
            yield self.data[start : start + rows]

    def describe(self) -> dict[str, Any]:
        return {"file": str(self.path), "file_sha256": sha256_file(self.path), "file_count": len(self.data)}

    def labels(self) -> Optional[list[str]]:
        return self.keys


class EmbedSource(Source):
    """Embeddings of the images under a folder (recursive, sorted) by an FR model, no flip.

    Images of any size are resized to 112×112 (area interpolation when shrinking, as the IDiff-Face
    context extractor resizes without aligning).
    """

    name, finite = "embed", True

    def __init__(self, images: str | Path, fr_model: str | Path, *, device: str = "auto", batch_size: int = 256,
                 workers: int = 8, dim: int = CONTEXT_DIM, progress: Optional[ProgressFactory] = None):
        from .models import load_fr_model

        self.images, self.fr_model = Path(images), Path(fr_model)
        if not self.images.is_dir():
            raise InputError(self.images, "image folder not found")
        self.files = sorted(p for p in self.images.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise InputError(self.images, f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
        self.embedder = load_fr_model(self.fr_model, device=device, batch_size=batch_size)
        if self.embedder.dim != dim:
            raise InputError(self.fr_model, f"produces {self.embedder.dim}-d embeddings; identity contexts must be {dim}-d")
        self.workers, self.progress = workers, progress
        self._data: Optional[np.ndarray] = None

    def _embed_all(self) -> np.ndarray:
        from .align import read_image, resize_to

        def load(p: Path) -> np.ndarray:
            return resize_to(read_image(p), 112)[:, :, ::-1]  # BGR → RGB

        advance = self.progress("embed images", len(self.files)) if self.progress else None
        out = np.empty((len(self.files), self.embedder.dim), dtype=np.float64)
        bs = self.embedder.batch_size
        with ThreadPoolExecutor(self.workers) as pool:
            for start in range(0, len(self.files), bs):
                batch = np.stack(list(pool.map(load, self.files[start : start + bs])))
                out[start : start + len(batch)] = self.embedder.embed(batch)
                if advance:
                    advance(len(batch))
        norms = np.linalg.norm(out, axis=1)
        if (norms == 0).any() or not np.isfinite(out).all():
            bad = self.files[int(np.argmin(np.where(np.isfinite(norms), norms, -1)))]
            raise InputError(bad, f"{self.fr_model.name} gave a zero or non-finite embedding")
        return out

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        if self._data is None:
            self._data = self._embed_all()
        for start in range(0, len(self._data), rows):
            yield self._data[start : start + rows]

    def describe(self) -> dict[str, Any]:
        return {"images": str(self.images), "image_count": len(self.files), "fr_model": str(self.fr_model),
                "fr_model_sha256": sha256_file(self.fr_model), "fr_model_description": self.embedder.description}

    def labels(self) -> Optional[list[str]]:
        return [p.relative_to(self.images).as_posix() for p in self.files]


# -------------------------------------------------------------------------------- greedy filter
def _device(device: Optional[str]) -> torch.device:
    from .models.torch_model import resolve_device

    return resolve_device(device)  # a CUDA request on a machine without one is a ConfigError


class GreedyFilter:
    """Streaming greedy filter over candidate blocks, on ``device``, exactly equal to the sequential loop.

    A candidate is kept iff ``max cos(candidate, kept) < threshold`` (``threshold=None`` keeps all).
    Each block is first compared with everything kept so far in one matrix product (candidates that
    fail are out: the kept set only grows); the survivors are then resolved in order using the
    block's own Gram matrix. Cosines are float64 dot products of unit rows.
    """

    def __init__(self, dim: int, threshold: Optional[float], limit: Optional[int] = None,
                 device: Optional[str] = "auto", block: int = 1024):
        self.dim, self.threshold, self.limit = dim, threshold, limit
        self.device, self.block = _device(device), block
        self.kept = torch.empty((min(max(limit or 0, 1024), 1 << 16), dim), dtype=torch.float64, device=self.device)
        self.n_kept = 0
        self.consumed = 0
        self.kept_index: list[int] = []
        self.max_cosine = -1.0  # max pairwise cosine among kept identities

    @property
    def full(self) -> bool:
        return self.limit is not None and self.n_kept >= self.limit

    def _max_to_kept(self, cand: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(cand),), -float("inf"), dtype=torch.float64, device=self.device)
        step = max(1, (1 << 26) // max(len(cand), 1))  # bounds the similarity tile's memory
        for s in range(0, self.n_kept, step):
            out = torch.maximum(out, (cand @ self.kept[s : min(s + step, self.n_kept)].T).amax(dim=1))
        return out

    def _append(self, rows: torch.Tensor) -> None:
        need = self.n_kept + len(rows)
        if need > len(self.kept):
            grown = torch.empty((max(need, 2 * len(self.kept)), self.dim), dtype=torch.float64, device=self.device)
            grown[: self.n_kept] = self.kept[: self.n_kept]
            self.kept = grown
        self.kept[self.n_kept : need] = rows
        self.n_kept = need

    def feed(self, candidates: np.ndarray) -> int:
        """Filter unit rows in stream order; returns how many were consumed (fewer once full)."""
        used = 0
        for s in range(0, len(candidates), self.block):
            if self.full:
                break
            used += self._feed_block(candidates[s : s + self.block])
        return used

    def _feed_block(self, block_np: np.ndarray) -> int:
        cand = torch.from_numpy(np.ascontiguousarray(block_np, dtype=np.float64)).to(self.device)
        prev = self._max_to_kept(cand).cpu().numpy()
        gram = (cand @ cand.T).cpu().numpy()
        t = self.threshold
        alive = prev < t if t is not None else np.ones(len(cand), dtype=bool)
        best = prev.copy()  # max cosine to kept identities, updated as the block's own are kept
        keep: list[int] = []
        used = len(cand)
        for i in range(len(cand)):
            if self.limit is not None and self.n_kept + len(keep) >= self.limit:
                used = i
                break
            if not alive[i]:
                continue
            keep.append(i)
            self.max_cosine = max(self.max_cosine, float(best[i]))
            if t is not None:
                alive[i + 1 :] &= gram[i, i + 1 :] < t
            np.maximum(best[i + 1 :], gram[i, i + 1 :], out=best[i + 1 :])
        if keep:
            self._append(cand[torch.as_tensor(keep, device=self.device)])
            self.kept_index.extend(self.consumed + k for k in keep)
        self.consumed += used
        return used

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Kept unit rows (float64) and their positions in the candidate stream."""
        return self.kept[: self.n_kept].cpu().numpy(), np.asarray(self.kept_index, dtype=np.int64)


def greedy_filter(x: np.ndarray, threshold: Optional[float], limit: Optional[int] = None,
                  device: Optional[str] = "cpu", block: int = 1024) -> np.ndarray:
    """Indices of the rows of ``x`` kept by the greedy filter (rows are normalised first)."""
    f = GreedyFilter(x.shape[1], threshold, limit, device, block)
    f.feed(normalize_rows(x))
    return f.result()[1]


# ------------------------------------------------------------------------------------ negatives
def select_negatives(emb: np.ndarray, method: str, pool_size: Optional[int] = None,
                     device: Optional[str] = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Per identity, the index of its negative among the first ``pool_size`` identities, and their cosine.

    * ``far``: argmin cosine over the pool (NegFaceDiff Far-Neg; first index on ties).
    * ``mid``: the pool identity at position ``P // 2`` of the cosines sorted ascending (stable),
      the pool including the identity itself (NegFaceDiff Mid-Neg).
    * ``rand``: identity ``(i − 1) mod P`` — the previous identity, the first taking the pool's
      last (NegFaceDiff Rand-Neg); identities are drawn at random, so this is a random other one.
    """
    if method not in NEGATIVE_METHODS:
        raise ConfigError(f"unknown negatives method {method!r}; choose one of {', '.join(NEGATIVE_METHODS)}")
    n = len(emb)
    pool = n if pool_size is None else int(pool_size)
    if not 2 <= pool <= n:
        raise ConfigError(f"--pool-size {pool}: must be between 2 and the number of identities ({n})")
    dev = _device(device)
    x = torch.from_numpy(normalize_rows(emb)).to(dev)
    p = x[:pool]
    index = np.empty(n, dtype=np.int64)
    cosine = np.empty(n, dtype=np.float64)
    rows = max(1, (1 << 25) // pool)
    for s in range(0, n, rows):
        sims = x[s : s + rows] @ p.T
        if method == "far":
            idx = sims.argmin(dim=1)
        elif method == "mid":
            idx = torch.sort(sims, dim=1, stable=True).indices[:, pool // 2]
        else:
            idx = (torch.arange(s, s + len(sims), device=dev) - 1) % pool
        index[s : s + len(sims)] = idx.cpu().numpy()
        cosine[s : s + len(sims)] = sims.gather(1, idx[:, None])[:, 0].cpu().numpy()
    return index, cosine


# ---------------------------------------------------------------------------------------- build
@dataclass
class Identities:
    """Filtered identity contexts and the record that goes to ``identities.json``."""

    embeddings: np.ndarray  # float32 N×512, unit rows
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def negatives(self) -> Optional[np.ndarray]:
        neg = self.info.get("negatives")
        return None if neg is None else np.asarray(neg["index"], dtype=np.int64)


def physical_memory() -> int | None:
    """Bytes of RAM on this machine (None where the OS does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_identity_count(n: Optional[int], max_candidates: Optional[int], threshold: Optional[float] = None) -> None:
    """Fail at once, before any work, on an identity count that cannot be met or cannot fit in memory."""
    if n is None:
        return
    if max_candidates is not None and n > max_candidates:
        raise ConfigError(f"-n {n:,}: more identities than the {max_candidates:,} candidates --max-candidates allows")
    # the greedy filter keeps every identity in float64 and the result in float32
    need = n * CONTEXT_DIM * (8 + 4)
    total = physical_memory()
    if total is not None and need > 0.8 * total:
        raise ConfigError(f"-n {n:,}: keeping {n:,} identities of {CONTEXT_DIM} dimensions needs {need / 2**30:,.1f} GiB of memory; "
                          f"this machine has {total / 2**30:,.1f} GiB")


def build_identities(
    source: Source,
    n: Optional[int],
    max_similarity: Optional[float],
    *,
    negatives: Optional[str] = None,
    pool_size: Optional[int] = None,
    device: Optional[str] = "auto",
    max_candidates: Optional[int] = None,
    block: int = 1024,
    progress: Optional[ProgressFactory] = None,
) -> Identities:
    """Walk ``source``, keep ``n`` identities by the greedy rule, then choose negatives if asked."""
    if n is None and not source.finite:
        raise ConfigError(f"source {source.name}: the number of identities is required (-n N)")
    if max_similarity is not None and not -1.0 < max_similarity <= 1.0:
        raise ConfigError(f"--max-similarity {max_similarity}: must be in (-1, 1]")
    if max_candidates is None:
        max_candidates = 100 * n + 10_000 if n is not None else None
    filt = GreedyFilter(CONTEXT_DIM, max_similarity, n, device, block)
    advance = progress("filter identities", n or 0) if progress else None
    chunk = 4 * block
    for cand in source.blocks(chunk):
        if max_candidates is not None:
            cand = cand[: max_candidates - filt.consumed]
        before = filt.n_kept
        filt.feed(normalize_rows(cand))
        if advance:
            advance(filt.n_kept - before)
        if filt.full or (max_candidates is not None and filt.consumed >= max_candidates):
            break
    kept, index = filt.result()
    if n is not None and len(kept) < n:
        thr = f"max cosine < {max_similarity}" if max_similarity is not None else "no filter"
        where = f"{filt.consumed} candidates" + (" (all the source has)" if source.finite else " (the candidate limit)")
        raise FrBenchError(f"source {source.name}: only {len(kept)} of {n} identities found with {thr} in {where}; "
                           "lower -n, raise --max-similarity" + ("" if source.finite else " or --max-candidates"))
    emb = normalize_rows(kept).astype(np.float32)
    info: dict[str, Any] = {
        "format": FORMAT,
        "frbench_version": __version__,
        "source": source.name,
        "seed": getattr(source, "seed", None),
        "max_similarity": max_similarity,
        "dim": CONTEXT_DIM,
        "counts": {"candidates": filt.consumed, "kept": len(kept), "rejected": filt.consumed - len(kept)},
        "max_pairwise_cosine": filt.max_cosine if len(kept) > 1 else None,
        "source_detail": source.describe(),
        "candidate_index": index.tolist(),
    }
    labels = source.labels()
    if labels is not None:
        info["labels"] = [labels[i] for i in index]
    info["negatives"] = None
    if negatives is not None:
        neg, cos = select_negatives(kept, negatives, pool_size, device)
        info["negatives"] = {"method": negatives, "pool_size": pool_size or len(kept), "index": neg.tolist(),
                             "cosine": [round(float(c), 6) for c in cos]}
    return Identities(emb, info)


def make_source(source: str, *, seed: int = 0, reference_embeddings: Optional[Path] = None,
                pca_components: Optional[int] = None, images: Optional[Path] = None,
                fr_model: Optional[Path] = None, file: Optional[Path] = None, device: str = "auto",
                batch_size: int = 256, workers: int = 8, progress: Optional[ProgressFactory] = None) -> Source:
    """Build the named source from its options (each source names the option it is missing)."""
    if source == "uniform":
        return UniformSource(seed)
    if source == "pca":
        if reference_embeddings is None:
            raise ConfigError("source pca needs --reference-embeddings FILE (.npy of N×512 embeddings)")
        return PcaSource(reference_embeddings, seed, pca_components)
    if source == "embed":
        if images is None or fr_model is None:
            raise ConfigError("source embed needs --images DIR and --fr-model PATH")
        return EmbedSource(images, fr_model, device=device, batch_size=batch_size, workers=workers, progress=progress)
    if source == "file":
        if file is None:
            raise ConfigError("source file needs --file PATH (.npy array or IDiff-Face torch-saved dict)")
        return FileSource(file)
    raise ConfigError(f"unknown identity source {source!r}; choose one of {', '.join(SOURCES)}")


# ------------------------------------------------------------------------------------------- io
def write_identities(out_dir: str | Path, ids: Identities) -> tuple[Path, Path]:
    """Write ``identities.npy`` then ``identities.json`` atomically (the JSON marks completion)."""
    out_dir = Path(out_dir)
    npy, meta = out_dir / "identities.npy", out_dir / "identities.json"
    with atomic_path(npy) as tmp:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npy" to the temp name
            np.save(f, np.ascontiguousarray(ids.embeddings, dtype=np.float32), allow_pickle=False)
    write_json_atomic(meta, {**ids.info, "embeddings_sha256": sha256_file(npy)})
    return npy, meta


def read_identities(path: str | Path) -> Identities:
    """Read an ``identities`` folder (or its ``.npy``): unit float32 N×512 rows and the JSON record."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    npy, meta = folder / "identities.npy", folder / "identities.json"
    if not npy.is_file():
        raise InputError(npy, "identities file not found (run `frbench identities` first)")
    emb, _ = load_embedding_file(npy)
    info: dict[str, Any] = {}
    if meta.is_file():
        import json

        try:
            info = json.loads(meta.read_text())
        except ValueError as err:
            raise InputError(meta, f"invalid JSON ({err})") from None
        neg = info.get("negatives")
        if neg is not None:
            idx = np.asarray(neg.get("index", []))
            if idx.shape != (len(emb),) or (len(idx) and (idx.min() < 0 or idx.max() >= len(emb))):
                raise InputError(meta, f"negatives.index must hold {len(emb)} indices in [0, {len(emb)})")
    return Identities(normalize_rows(emb).astype(np.float32), info)
