"""Aligned-crop cache for IJB-B/C: each loose crop is decoded and aligned once, then read at memory speed.

Layout of ``<workdir>/cache/ijb/<key>/`` (key = landmark file sha256 + crop settings + version):

* ``meta.json`` — image count, chunk size, crop shape, source file, version (written atomically);
* ``crops.u8``  — raw ``N×112×112×3`` uint8 RGB, a memory map (IJB-C: 469,375 crops ≈ 17.7 GB);
* ``done.npy``  — one bool per chunk of ``chunk`` images, rewritten atomically after each chunk.

A chunk's crops are flushed to ``crops.u8`` before its flag is set, so a build killed at any moment
resumes with the chunks still unset; the flags are the only thing read to decide what is left. A
file lock keeps two builders of the same cache apart.

Alignment is insightface's 5-point similarity warp (``face_align.norm_crop``: skimage
``SimilarityTransform`` → ``cv2.warpAffine`` to 112×112, border 0) onto the destination points that
``recognition/arcface_torch/eval_ijbc.py`` uses: the 96×112 template shifted by +8 px, computed in
float32. That differs from ``face_align.arcface_dst`` by one float32 ulp in one coordinate, which
changes a few pixels of most crops, so frbench uses the evaluation script's points to match it.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from contextlib import contextmanager
from multiprocessing import get_context, parent_process
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from ..errors import InputError
from ..io import atomic_path, write_json_atomic

CACHE_VERSION = 1
CROP_SIZE = 112
SHAPE = (CROP_SIZE, CROP_SIZE, 3)
CHUNK = 1024
#: fewer pending images than this are aligned in threads (spawning processes costs more)
PROCESS_THRESHOLD = 8192


def _reference_dst() -> np.ndarray:
    dst = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]],
                   dtype=np.float32)
    dst[:, 0] += 8.0
    return dst


#: eval_ijbc.py's alignment destination (see the module docstring)
REFERENCE_DST = _reference_dst()


def similarity_matrix(landmarks: np.ndarray, dst: np.ndarray = REFERENCE_DST) -> np.ndarray:
    """2×3 similarity transform from 5 landmarks to ``dst`` (NaN when the points are degenerate)."""
    from skimage.transform import SimilarityTransform

    if hasattr(SimilarityTransform, "from_estimate"):  # skimage ≥ 0.26 deprecates estimate()
        tform = SimilarityTransform.from_estimate(landmarks, dst)
        params = tform.params if tform else None
    else:  # pragma: no cover - older skimage
        tform = SimilarityTransform()
        params = tform.params if tform.estimate(landmarks, dst) else None
    # a failed estimate leaves NaNs in the reference, which warpAffine turns into a black crop
    return np.full((2, 3), np.nan) if params is None else params[0:2, :]


def align_crop(image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """One loose crop (as ``cv2.imread`` gives it) → 112×112 RGB uint8 aligned face."""
    warped = cv2.warpAffine(image_bgr, similarity_matrix(landmarks), (CROP_SIZE, CROP_SIZE), borderValue=0.0)
    return cv2.cvtColor(warped, cv2.COLOR_BGR2RGB)


def default_workers() -> int:
    """Worker count for decode+align: ``$FRBENCH_IJB_WORKERS`` or the CPUs this process may use."""
    env = os.environ.get("FRBENCH_IJB_WORKERS", "").strip()
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class CropCache:
    """One cache folder; ``crops`` is writable while building, read-only once complete."""

    def __init__(self, path: Path, n: int, chunk: int):
        self.path = path
        self.n = n
        self.chunk = chunk
        self.done = np.load(path / "done.npy")
        mode = "r" if self.done.all() else "r+"
        self.crops = np.memmap(path / "crops.u8", np.uint8, mode, shape=(n, *SHAPE))

    @property
    def n_chunks(self) -> int:
        return len(self.done)

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def bounds(self, chunk: int) -> tuple[int, int]:
        return chunk * self.chunk, min(self.n, (chunk + 1) * self.chunk)

    def pending(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(~self.done)]

    def mark_done(self, chunk: int) -> None:
        self.done[chunk] = True
        with atomic_path(self.path / "done.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, self.done)


def cache_key(landmark_sha256: str) -> str:
    from ..cache import stable_hash

    return stable_hash({"landmarks": landmark_sha256, "crop": list(SHAPE), "dst": REFERENCE_DST.tolist(),
                        "version": CACHE_VERSION})[:16]


def open_cache(root: str | Path, key: str, n: int, *, chunk: int = CHUNK, info: dict | None = None) -> CropCache:
    """Open ``<root>/<key>/``, creating an empty (all pending) cache if it is new or unusable."""
    path = Path(root) / key
    path.mkdir(parents=True, exist_ok=True)
    meta_file = path / "meta.json"
    meta = {"version": CACHE_VERSION, "n": n, "chunk": chunk, "shape": list(SHAPE), **(info or {})}
    with _lock(path):
        try:
            old = json.loads(meta_file.read_text())
            ok = (old.get("version"), old.get("n"), old.get("shape")) == (CACHE_VERSION, n, list(SHAPE))
            ok = ok and (path / "crops.u8").stat().st_size == n * int(np.prod(SHAPE))
            done = np.load(path / "done.npy") if ok else None
            ok = ok and done is not None and done.dtype == bool and len(done) == -(-n // int(old["chunk"]))
            chunk = int(old["chunk"]) if ok else chunk
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            for name in ("meta.json", "done.npy", "crops.u8"):
                (path / name).unlink(missing_ok=True)
            with open(path / "crops.u8", "wb") as f:
                f.truncate(n * int(np.prod(SHAPE)))  # sparse: pages appear as chunks are written
            with atomic_path(path / "done.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, np.zeros(-(-n // chunk), dtype=bool))
            write_json_atomic(meta_file, {**meta, "chunk": chunk})
    return CropCache(path, n, chunk)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------- building
_OPEN_MAPS: dict[tuple[str, int], np.memmap] = {}


def _align_chunk(crops_file: str, n: int, start: int, paths: list[str], landmarks: np.ndarray) -> tuple[int, str] | None:
    """Decode and align ``paths`` into rows ``start…``; returns (row, kind) of the first bad image."""
    cv2.setNumThreads(1)  # one decode per worker; the pool provides the parallelism
    if parent_process() is None:  # a thread of the caller: map per call, keep nothing open
        mm = np.memmap(crops_file, np.uint8, "r+", shape=(n, *SHAPE))
    else:  # a pool process: map once per process
        mm = _OPEN_MAPS.get((crops_file, n))
        if mm is None:
            mm = _OPEN_MAPS[(crops_file, n)] = np.memmap(crops_file, np.uint8, "r+", shape=(n, *SHAPE))
    for i, (p, lmk) in enumerate(zip(paths, landmarks)):
        img = cv2.imread(p)  # what the reference calls: BGR, EXIF orientation applied
        if img is None:
            return (start + i, "missing" if not os.path.exists(p) else "unreadable")
        mm[start + i] = align_crop(img, lmk)
    mm.flush()
    return None


def fill_cache(
    cache: CropCache,
    image_paths: list[str],
    landmarks: np.ndarray,
    *,
    workers: int | None = None,
    processes: bool | None = None,
    progress: Callable[[int], None] | None = None,
    describe: Callable[[int], str] | None = None,
    stop: threading.Event | None = None,
) -> Iterator[int]:
    """Align every pending chunk; yield chunk numbers as their crops become readable.

    Chunks already done are yielded first (in order), then the rest in completion order, so a caller
    can embed while workers are still aligning. A missing or undecodable image raises
    :class:`InputError` naming it (``describe(row)`` says where it is listed); chunks finished
    before that stay done.
    """
    if cache.complete:
        yield from range(cache.n_chunks)
        return
    workers = workers or default_workers()
    crops_file = str(cache.path / "crops.u8")
    with _lock(cache.path):
        # another builder may have finished chunks while we waited for the lock
        cache.done = np.load(cache.path / "done.npy")
        for c in np.flatnonzero(cache.done):
            yield int(c)
        todo = cache.pending()
        n_pending = sum(b - a for a, b in map(cache.bounds, todo))
        use_processes = processes if processes is not None else (workers > 1 and n_pending >= PROCESS_THRESHOLD)
        pool: Executor = (ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if use_processes and todo
                          else ThreadPoolExecutor(workers))
        try:
            futures: dict[Future, int] = {}
            queue = list(reversed(todo))
            # bounded submission: an interrupt leaves little queued work to cancel
            def submit() -> None:
                while queue and len(futures) < 4 * workers:
                    c = queue.pop()
                    a, b = cache.bounds(c)
                    futures[pool.submit(_align_chunk, crops_file, cache.n, a, image_paths[a:b], landmarks[a:b])] = c
            submit()
            while futures:
                finished, _ = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
                if stop is not None and stop.is_set():
                    return
                for fut in finished:
                    c = futures.pop(fut)
                    bad = fut.result()
                    if bad is not None:
                        row, kind = bad
                        where = f" ({describe(row)})" if describe else ""
                        problem = "image not found" if kind == "missing" else "cannot be decoded as an image"
                        raise InputError(image_paths[row], f"{problem}{where}")
                    cache.mark_done(c)
                    if progress is not None:
                        progress(cache.bounds(c)[1] - cache.bounds(c)[0])
                    yield c
                submit()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if cache.complete:
        cache.crops = np.memmap(cache.path / "crops.u8", np.uint8, "r", shape=(cache.n, *SHAPE))
