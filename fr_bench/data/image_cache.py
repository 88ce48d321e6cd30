"""Decode a training set once into a uint8 memory-mapped cache that training reads at memory speed.

Layout of ``<cache_root>/<fingerprint[:16]>/``:

* ``meta.json`` — dataset fingerprint, image count, shape, cache version (written first);
* ``images.u8`` — raw ``N×112×112×3`` uint8 RGB (0.5M images ≈ 19 GB);
* ``labels.i8`` — int64 class per image (for RecordIO, read from the record headers);
* ``status.u8`` — per image 0 = not decoded yet, 1 = decoded, 2 = unreadable;
* ``DONE.json`` — written atomically when every image has a status.

Decoding runs in worker processes (threads for small sets: OpenCV releases the GIL) in chunks;
each image's status byte is written after its pixels, so a killed build resumes where it stopped:
the next call decodes only images still at 0. A file lock keeps two builders apart. Images that
are not 112×112 are resized (bilinear), not aligned: train on aligned crops.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import InputError
from ..io import write_json_atomic
from .binfile import IMAGE_SIZE, decode_image
from .train_set import TrainSet

CACHE_VERSION = 1
PENDING, OK, BAD = 0, 1, 2
SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
#: below this many images to decode, threads are used instead of spawning processes
PROCESS_THRESHOLD = 4096

ProgressMake = Callable[[str, int], Callable[[int], None]]


@dataclass
class ImageCache:
    """A finished cache opened read-only."""

    path: Path
    images: np.ndarray  # memmap N×112×112×3 uint8
    labels: np.ndarray  # int64 [N]
    status: np.ndarray  # uint8 [N]

    @property
    def ok(self) -> np.ndarray:
        """Indices of decoded images."""
        return np.flatnonzero(self.status == OK)

    @property
    def bad(self) -> np.ndarray:
        return np.flatnonzero(self.status == BAD)

    def __len__(self) -> int:
        return len(self.status)


def _arrays(d: Path, n: int, mode: str) -> tuple[np.memmap, np.memmap, np.memmap]:
    return (
        np.memmap(d / "images.u8", np.uint8, mode, shape=(n, *SHAPE)),
        np.memmap(d / "labels.i8", np.int64, mode, shape=(n,)),
        np.memmap(d / "status.u8", np.uint8, mode, shape=(n,)),
    )


def open_cache(d: str | Path) -> ImageCache:
    """Open a finished cache folder read-only."""
    d = Path(d)
    meta = json.loads((d / "meta.json").read_text())
    images, labels, status = _arrays(d, int(meta["n"]), "r")
    return ImageCache(d, images, np.asarray(labels), np.asarray(status))


@contextmanager
def _locked(d: Path) -> Iterator[None]:
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cache_dir(cache_root: str | Path, train_set: TrainSet) -> Path:
    return Path(cache_root) / train_set.fingerprint[:16]


def build_cache(
    train_set: TrainSet,
    cache_root: str | Path,
    *,
    workers: int = 8,
    progress: ProgressMake | None = None,
    chunk: int = 256,
) -> ImageCache:
    """Decode ``train_set`` into its cache folder (or reuse / finish an existing one) and open it."""
    d = cache_dir(cache_root, train_set)
    n = len(train_set)
    meta = {"version": CACHE_VERSION, "fingerprint": train_set.fingerprint, "n": n, "shape": list(SHAPE), "kind": train_set.kind, "root": str(train_set.root)}
    with _locked(d):
        if (d / "DONE.json").is_file() and _meta_matches(d, meta):
            return open_cache(d)
        if not _meta_matches(d, meta):
            for name in ("DONE.json", "images.u8", "labels.i8", "status.u8", "meta.json"):
                (d / name).unlink(missing_ok=True)
            _create(d, n, train_set)
            write_json_atomic(d / "meta.json", meta)
        t0 = time.perf_counter()
        _, _, status = _arrays(d, n, "r")
        pending = np.flatnonzero(np.asarray(status) == PENDING)
        del status
        if len(pending):
            _decode(d, train_set, pending, workers=workers, progress=progress, chunk=chunk)
        images, labels, status = _arrays(d, n, "r+")
        images.flush()
        counts = np.bincount(np.asarray(status), minlength=3)
        if counts[PENDING]:  # pragma: no cover - every task writes a status for each of its images
            raise InputError(d, f"cache build left {counts[PENDING]} images undecoded; rerun to finish it")
        write_json_atomic(d / "DONE.json", {"images": n, "decoded": int(counts[OK]), "unreadable": int(counts[BAD]), "seconds": round(time.perf_counter() - t0, 3)})
        del images, labels, status
    return open_cache(d)


def _meta_matches(d: Path, meta: dict[str, Any]) -> bool:
    try:
        old = json.loads((d / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    sizes_ok = all((d / f).is_file() for f in ("images.u8", "labels.i8", "status.u8"))
    return sizes_ok and {k: old.get(k) for k in ("version", "fingerprint", "n", "shape")} == {k: meta[k] for k in ("version", "fingerprint", "n", "shape")}


def _create(d: Path, n: int, train_set: TrainSet) -> None:
    images, labels, status = _arrays(d, n, "w+")  # sparse files; pages appear as they are written
    if train_set.labels is not None:
        labels[:] = train_set.labels
    else:
        labels[:] = -1
    status[:] = PENDING
    labels.flush()
    status.flush()
    del images, labels, status


def _tasks(d: Path, ts: TrainSet, pending: np.ndarray, chunk: int) -> list[dict[str, Any]]:
    tasks = []
    for start in range(0, len(pending), chunk):
        idx = pending[start : start + chunk].tolist()
        task: dict[str, Any] = {"dir": str(d), "n": len(ts), "kind": ts.kind, "indices": idx}
        if ts.kind == "recordio":
            task["rec"] = str(ts.rec_path)
            task["items"] = [(ts.keys[i], ts.offsets[i]) for i in idx]
        else:
            task["items"] = [ts.paths[i] for i in idx]
        tasks.append(task)
    return tasks


def _decode(d: Path, ts: TrainSet, pending: np.ndarray, *, workers: int, progress: ProgressMake | None, chunk: int) -> None:
    tasks = _tasks(d, ts, pending, chunk)
    advance = progress("decode → cache", len(pending)) if progress else None
    use_processes = workers > 1 and len(pending) >= PROCESS_THRESHOLD
    pool: Executor
    if use_processes:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    else:
        pool = ThreadPoolExecutor(max_workers=max(1, min(workers, os.cpu_count() or 1)))
    with pool:
        futures = [pool.submit(decode_task, t) for t in tasks]
        try:
            for fut in as_completed(futures):
                done, fatal = fut.result()
                if fatal is not None:
                    raise InputError(fatal[0], fatal[1])
                if advance:
                    advance(done)
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def decode_task(task: dict[str, Any]) -> tuple[int, tuple[str, str] | None]:
    """Worker: decode one chunk into the cache; returns (count, fatal (path, problem) or None).

    Structural damage (a RecordIO record that cannot be framed) is fatal and reported with its byte
    offset; an image that cannot be decoded is marked unreadable and the caller decides.
    """
    from .recordio import header_label, read_record_at, unpack

    d = Path(task["dir"])
    images, labels, status = _arrays(d, task["n"], "r+")
    rec = open(task["rec"], "rb") if task["kind"] == "recordio" else None
    try:
        for i, item in zip(task["indices"], task["items"]):
            if rec is not None:
                key, offset = item
                try:
                    header, payload = unpack(read_record_at(rec, offset, task["rec"], key), task["rec"], f"record {key} at offset {offset}")
                except InputError as err:
                    return 0, (str(err.path), err.problem)
                labels[i] = header_label(header)
            else:
                try:
                    with open(item, "rb") as f:
                        payload = f.read()
                except OSError:
                    payload = b""
            img = decode_image(payload) if payload else None
            if img is None:
                status[i] = BAD
            else:
                images[i] = img
                status[i] = OK
    finally:
        if rec is not None:
            rec.close()
        del images, labels, status
    return len(task["indices"]), None
