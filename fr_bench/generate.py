"""The generation engine: identity contexts → per-image seeds → adapter batches → PNG files + manifest.

Output layout (``--out DIR``)::

    DIR/<identity:05d>/<sample:03d>.png    one file per image, written atomically
    DIR/generate.json                      settings that decide the pixels (checked on every resume)
    DIR/manifest.shard-<i>-of-<n>.parquet  each finished shard's rows
    DIR/manifest.parquet                   all rows, written once every image of the run exists

The image of (identity i, sample k) is ``adapter.generate`` of context row i with seed
``sample_seed(run_seed, i, k)``. Work is split by a pure function of the shard (a contiguous block
of identities), so shards may run as separate processes, under torchrun or as array jobs, in any
order. Each shard skips images already on disk: kill it at any point and run it again. Every
``generate`` call gets exactly ``batch_size`` rows (a short last batch is padded with repeats
whose outputs are dropped), so tensor shapes never depend on where a run resumed.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from . import __version__
from .errors import ConfigError, InputError
from .io import atomic_path, write_bytes_atomic, write_json_atomic

SETTINGS_FILE = "generate.json"
MANIFEST_FILE = "manifest.parquet"
FORMAT = "frbench-generate/1"
#: settings that must match for a folder to be resumed (anything else, e.g. batch size, may change)
PIXEL_KEYS = ("generator", "adapter", "identities_sha256", "negatives_sha256", "num_identities", "per_identity",
              "seed", "dtype", "device_type")

Advance = Callable[[int], None]
ProgressFactory = Callable[[str, int], Advance]


# ------------------------------------------------------------------------------------------ shards
@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based): a contiguous block of identities."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"i/n"`` with 0 ≤ i < n."""
        try:
            i, n = (int(p) for p in str(text).split("/"))
        except ValueError:
            raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 0/4 (0-based shard index / number of shards)") from None
        if n < 1 or not 0 <= i < n:
            raise ConfigError(f"--shard {text}: the index must be in 0..{max(n - 1, 0)} (0-based) and the count ≥ 1")
        return cls(i, n)

    @classmethod
    def from_env(cls, env: Optional[dict[str, str]] = None) -> Optional["Shard"]:
        """torchrun's ``RANK``/``WORLD_SIZE`` (None when not launched by torchrun)."""
        env = os.environ if env is None else env
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        return cls.parse(f"{env['RANK']}/{env['WORLD_SIZE']}")

    def identities(self, n: int) -> range:
        """Identities of this shard: the balanced contiguous block ``[i·n//c, (i+1)·n//c)``."""
        return range(self.index * n // self.count, (self.index + 1) * n // self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def image_relpath(identity: int, sample: int) -> str:
    return f"{identity:05d}/{sample:03d}.png"


# -------------------------------------------------------------------------------------- identities
@dataclass
class IdentitySet:
    """The contexts to generate (rows 0..N−1) and, for negative guidance, one negative per row."""

    vectors: np.ndarray  # float32 [N, D]
    source: Path
    sha256: str
    negative_rows: Optional[np.ndarray] = None  # int64 [N], rows of the full context file
    negative_vectors: Optional[np.ndarray] = None  # float32 [N, D]
    negatives_sha256: Optional[str] = None


def _array_sha(*arrays: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def load_identity_set(path: str | Path, *, num: Optional[int] = None, negatives: Optional[str | Path] = None,
                      need_negatives: bool = False) -> IdentitySet:
    """Read ``identities.npy`` (+ ``identities.json`` negatives) from a folder, or any contexts file.

    ``negatives`` overrides the JSON: a ``.npy`` of N row indices (int) or of N×D vectors (float).
    """
    from .identities import load_embedding_file, normalize_rows, read_identities

    path = Path(path)
    json_neg = None
    if path.is_dir() or path.name == "identities.npy":
        ids = read_identities(path)
        full, json_neg = ids.embeddings, ids.negatives
        source = (path if path.is_dir() else path.parent) / "identities.npy"
    else:
        arr, _ = load_embedding_file(path)
        full, source = normalize_rows(arr).astype(np.float32), path
    full = np.ascontiguousarray(full, dtype=np.float32)
    n_total = len(full)
    n = n_total if num is None else int(num)
    if not 1 <= n <= n_total:
        raise ConfigError(f"--num-identities {n}: {source} holds {n_total} identities")
    out = IdentitySet(vectors=full[:n], source=source, sha256=_array_sha(full[:n]))
    if not need_negatives:
        return out
    if negatives is not None:
        rows, vecs = _read_negatives(Path(negatives), full)
    elif json_neg is not None:
        rows, vecs = json_neg.astype(np.int64), None
    else:
        raise ConfigError(f"{source}: no negatives for negative guidance; run `frbench identities … --negatives far` "
                          "or pass --negatives FILE.npy (row indices or N×512 vectors)")
    if rows is not None:
        out.negative_rows = rows[:n]
        out.negative_vectors = full[rows[:n]]
    else:
        out.negative_vectors = np.ascontiguousarray(vecs[:n], dtype=np.float32)
    out.negatives_sha256 = _array_sha(out.negative_vectors)
    return out


def _read_negatives(path: Path, full: np.ndarray) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    if not path.is_file():
        raise InputError(path, "negatives file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise InputError(path, "holds pickled objects (e.g. NegFaceDiff's farthest_cossim.npy dict); frbench reads "
                                   "numeric arrays only — recompute with `frbench identities --negatives far`") from None
        raise InputError(path, f"unreadable .npy ({err})") from None
    except OSError as err:
        raise InputError(path, f"unreadable .npy ({err})") from None
    n, dim = full.shape
    if arr.dtype.kind in "iu":
        if arr.ndim == 2:
            arr = arr[:, 0]
        if arr.ndim != 1 or len(arr) < n or (len(arr) and (arr.min() < 0 or arr.max() >= n)):
            raise InputError(path, f"negative indices must be an int array of {n} rows in [0, {n})")
        return arr.astype(np.int64), None
    if arr.dtype.kind == "f":
        if arr.ndim != 2 or arr.shape[1] != dim or len(arr) < n or not np.isfinite(arr).all():
            shape = "×".join(str(s) for s in arr.shape)
            raise InputError(path, f"holds a {shape} array; negative contexts must be finite N×{dim} (N = {n})")
        return None, arr
    raise InputError(path, f"holds a {arr.dtype} array; expected row indices (int) or vectors (float)")


# ---------------------------------------------------------------------------------------- settings
def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Write ``generate.json`` on first use; refuse to resume a folder made with other pixel settings."""
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError as err:
            raise InputError(path, f"invalid JSON ({err}); remove it only if the folder is empty") from None
        diff = [k for k in PIXEL_KEYS if old.get(k) != settings.get(k)]
        if diff:
            k = diff[0]
            raise ConfigError(f"{path}: this folder was generated with {k}={json.dumps(old.get(k))}, now "
                              f"{json.dumps(settings.get(k))}; use another --out (or the same settings to resume)")
        return
    write_json_atomic(path, settings)


class ShardLock:
    """An exclusive ``flock`` per shard: a second process on the same shard stops instead of racing."""

    def __init__(self, out: Path, shard: Shard):
        self.path = out / f".shard-{shard.index}-of-{shard.count}.lock"
        self.shard = shard
        self._fd: Optional[int] = None

    def __enter__(self) -> "ShardLock":
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise ConfigError(f"{self.path.parent}: shard {self.shard} is being generated by another process") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)


# ---------------------------------------------------------------------------------------- manifest
def manifest_frame(ids: IdentitySet, identities: range, per_identity: int, seed: int) -> "Any":
    import pandas as pd

    from fr_bench.generators.base import sample_seed

    rows = [(i, k, sample_seed(seed, i, k), image_relpath(i, k), i) for i in identities for k in range(per_identity)]
    df = pd.DataFrame(rows, columns=["identity", "sample", "seed", "path", "context_row"])
    df = df.astype({"identity": "int64", "sample": "int64", "seed": "int64", "context_row": "int64"})
    if ids.negative_rows is not None:
        df["negative_row"] = ids.negative_rows[df["identity"].to_numpy()]
    return df


def _write_parquet(path: Path, df: Any) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def dataset_complete(out: Path, n_identities: int, per_identity: int) -> bool:
    want = {f"{k:03d}.png" for k in range(per_identity)}
    for i in range(n_identities):
        try:
            have = set(os.listdir(out / f"{i:05d}"))
        except FileNotFoundError:
            return False
        if not want <= have:
            return False
    return True


# ------------------------------------------------------------------------------------------ engine
def encode_png(img: np.ndarray) -> bytes:
    """HWC uint8 RGB → PNG bytes (deterministic for the same pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _clean_temp_files(folder: Path) -> None:
    """Remove temporaries a killed writer left behind (``.<name>.<random>.tmp``)."""
    try:
        for name in os.listdir(folder):
            if name.startswith(".") and name.endswith(".tmp"):
                (folder / name).unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def _batches(todo: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for s in range(0, len(todo), size):
        yield todo[s : s + size]


@dataclass
class GenerateResult:
    out: Path
    shard: Shard
    total: int  # images in this shard
    generated: int
    skipped: int
    seconds: float
    complete: bool  # every image of the whole run exists and manifest.parquet is written

    @property
    def images_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "shard": str(self.shard), "total": self.total, "generated": self.generated,
                "skipped": self.skipped, "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 3),
                "complete": self.complete, "manifest": str(self.out / MANIFEST_FILE) if self.complete else None}


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def run_generation(adapter: Any, ids: IdentitySet, *, out: str | Path, per_identity: int, seed: int,
                   shard: Shard = Shard(), batch_size: int = 64, settings: Optional[dict[str, Any]] = None,
                   writers: int = 4, progress: Optional[ProgressFactory] = None,
                   log: Optional[Callable[[str], None]] = None, log_every: float = 30.0) -> GenerateResult:
    """Generate this shard's missing images into ``out`` and the manifests; returns counts and speed."""
    out = Path(out)
    if per_identity < 1:
        raise ConfigError(f"--per-identity {per_identity}: must be ≥ 1")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be ≥ 1")
    dim = getattr(adapter, "context_dim", ids.vectors.shape[1])
    if ids.vectors.shape[1] != dim:
        raise InputError(ids.source, f"contexts are {ids.vectors.shape[1]}-d; the generator expects {dim}-d")
    needs_neg = bool(getattr(adapter, "needs_negatives", False))
    if needs_neg and ids.negative_vectors is None:
        raise ConfigError(f"{adapter.name} needs a negative context per identity (identities.json negatives or --negatives)")
    n_ids = len(ids.vectors)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings or {})
    from fr_bench.generators.base import sample_seed

    with ShardLock(out, shard):
        mine = shard.identities(n_ids)
        for i in mine:
            _clean_temp_files(out / f"{i:05d}")
        todo = [(i, k) for i in mine for k in range(per_identity) if not (out / image_relpath(i, k)).is_file()]
        total = len(mine) * per_identity
        skipped = total - len(todo)
        if log and skipped:
            log(f"shard {shard}: {skipped} of {total} images already present, {len(todo)} to generate")
        vectors = torch.from_numpy(ids.vectors)
        neg = torch.from_numpy(ids.negative_vectors) if needs_neg else None
        # every call gets the same row count (a pure function of the shard), whatever is left to do
        rows_per_call = min(batch_size, total)
        advance = progress(f"generate {adapter.name} shard {shard}", len(todo)) if progress and todo else None
        start = last_log = time.perf_counter()
        done = 0
        pending: list[Future[None]] = []
        with ThreadPoolExecutor(max_workers=max(1, writers)) as pool:
            for batch in _batches(todo, rows_per_call):
                m = len(batch)
                padded = batch + [batch[0]] * (rows_per_call - m)  # constant shapes; extra rows are dropped
                rows = torch.tensor([i for i, _ in padded], dtype=torch.long)
                seeds = torch.tensor([sample_seed(seed, i, k) for i, k in padded], dtype=torch.int64)
                imgs = adapter.generate(vectors[rows], seeds, negatives=neg[rows] if neg is not None else None)
                arr = imgs[:m].permute(0, 2, 3, 1).contiguous().cpu().numpy()
                for f in pending:  # at most one batch being written while the next one is generated
                    f.result()
                pending = [pool.submit(lambda p, a: write_bytes_atomic(p, encode_png(a)), out / image_relpath(i, k), arr[j])
                           for j, (i, k) in enumerate(batch)]
                done += m
                if advance:
                    advance(m)
                now = time.perf_counter()
                if log and now - last_log >= log_every:
                    rate = done / (now - start)
                    log(f"shard {shard}: {done}/{len(todo)} images, {rate:.2f} img/s, ETA {_fmt_eta((len(todo) - done) / rate)}")
                    last_log = now
            for f in pending:
                f.result()
        seconds = time.perf_counter() - start
        _write_parquet(out / f"manifest.shard-{shard.index}-of-{shard.count}.parquet",
                       manifest_frame(ids, mine, per_identity, seed))
    complete = dataset_complete(out, n_ids, per_identity)
    if complete:
        _write_parquet(out / MANIFEST_FILE, manifest_frame(ids, range(n_ids), per_identity, seed))
    return GenerateResult(out, shard, total, len(todo), skipped, seconds, complete)


def settings_record(*, generator: str, adapter: Any, weights: Path, ids: IdentitySet, per_identity: int, seed: int,
                    dtype: str, device: torch.device) -> dict[str, Any]:
    """The ``generate.json`` record: what decides the pixels, plus provenance."""
    describe = adapter.describe() if hasattr(adapter, "describe") else {}
    return {
        "format": FORMAT,
        "generator": generator,
        "adapter": describe,
        "weights": str(Path(weights).resolve()),
        "identities": str(ids.source.resolve()),
        "identities_sha256": ids.sha256,
        "negatives_sha256": ids.negatives_sha256,
        "num_identities": len(ids.vectors),
        "per_identity": per_identity,
        "seed": seed,
        "dtype": dtype,
        "device_type": device.type,
        "resolution": int(getattr(adapter, "native_resolution", 0)),
        "needs_alignment": bool(getattr(adapter, "needs_alignment", True)),
        "frbench_version": __version__,
    }


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def generation_device(device: Optional[str], env: Optional[dict[str, str]] = None) -> torch.device:
    """``auto`` picks CUDA when present; under torchrun (``LOCAL_RANK``) a bare cuda means cuda:LOCAL_RANK."""
    env = os.environ if env is None else env
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in env:
        device = f"cuda:{int(env['LOCAL_RANK'])}"
    return torch.device(device)
