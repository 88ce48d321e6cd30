"""Image-folder datasets as ``frbench metrics`` reads them.

Layout: ``DATASET/<identity>/<image>`` — one sub-folder per identity, PNG or JPEG of any size.
Sub-folders in sorted (string) order give the identity indices 0, 1, …; files in sorted order give
the sample order inside an identity. Hidden entries and other files are ignored.

An optional ``DATASET/manifest.parquet`` (written by frbench's generators) adds per-image
metadata: columns ``identity``, ``sample``, ``seed``, ``path`` (relative to DATASET) and
``context_row`` (row of the identity-contexts ``.npy`` the image was generated from). Manifest
paths must stay inside DATASET; rows without a path (e.g. images that alignment skipped) are
ignored. The images themselves always come from the folder.

Edge cases, by design:

* an **empty identity folder** keeps its index (indices stay aligned with generator output) but is
  skipped by every metric and reported under ``skipped``;
* an identity with **a single image** has no intra-class pair: it is skipped too (reported), so a
  selection of N identities takes the first N folders with at least ``min_images`` images;
* an **unreadable image** raises :class:`~fr_bench.errors.InputError` naming its path.

Nothing is decoded up front: :func:`iter_batches` streams uint8 batches.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from ..errors import InputError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg"}
MANIFEST_NAME = "manifest.parquet"
#: manifest columns frbench's generators write; only ``path`` is required to read one
MANIFEST_COLUMNS = ("identity", "sample", "seed", "path", "context_row")
#: identity-context files looked for beside the manifest when none is configured
CONTEXT_FILE_NAMES = ("contexts.npy", "identities.npy")
FR_SIZE = 112


@dataclass
class Identity:
    index: int  # position among all sub-folders (sorted)
    name: str
    files: list[str]  # paths relative to the dataset root, sorted


@dataclass
class ImageMeta:
    sample: Optional[int] = None
    seed: Optional[int] = None
    context_row: Optional[int] = None


@dataclass
class ImageFolderDataset:
    root: Path
    identities: list[Identity]
    meta: dict[str, ImageMeta] = field(default_factory=dict)  # relative path → manifest row
    manifest: Optional[Path] = None
    contexts_hint: Optional[Path] = None  # from the manifest's key-value metadata

    @property
    def num_images(self) -> int:
        return sum(len(i.files) for i in self.identities)

    def path(self, rel: str) -> Path:
        return self.root / rel


@dataclass
class Selection:
    """The images a metric run uses: ``labels[k]`` is the identity index of ``files[k]``."""

    dataset: ImageFolderDataset
    files: list[str]
    labels: np.ndarray
    identities: list[Identity]
    skipped: list[dict[str, object]]

    def digest(self) -> str:
        """Content stamp of the selected files (relative path, size, mtime) — the embedding-cache key."""
        h = hashlib.sha256()
        for rel, lab in zip(self.files, self.labels.tolist()):
            st = os.stat(self.dataset.path(rel))
            h.update(f"{lab}\0{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()


def open_dataset(root: str | Path) -> ImageFolderDataset:
    """Scan ``root`` (identity sub-folders) and read its manifest if there is one."""
    root = Path(root)
    if not root.exists():
        raise InputError(root, "dataset folder not found")
    if not root.is_dir():
        raise InputError(root, "not a folder (expected DATASET/<identity>/<image>)")
    subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not subdirs:
        raise InputError(root, "no identity sub-folders (expected DATASET/<identity>/<image>)")
    identities = []
    for index, name in enumerate(subdirs):
        files = sorted(
            f"{name}/{e.name}" for e in os.scandir(root / name)
            if e.is_file() and not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS
        )
        identities.append(Identity(index, name, files))
    ds = ImageFolderDataset(root, identities)
    if (root / MANIFEST_NAME).is_file():
        _read_manifest(ds, root / MANIFEST_NAME)
    return ds


def _read_manifest(ds: ImageFolderDataset, manifest: Path) -> None:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(manifest)
    except Exception as err:  # pyarrow raises several types for a broken file
        first = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise InputError(manifest, f"cannot read manifest ({first})") from None
    if "path" not in table.column_names:
        raise InputError(manifest, f"manifest lacks column 'path' (has: {', '.join(table.column_names)})")
    present = {f for i in ds.identities for f in i.files}
    root = ds.root.resolve()
    cols = {c: table.column(c).to_pylist() for c in MANIFEST_COLUMNS if c in table.column_names}
    for row, rel in enumerate(cols["path"]):
        if rel is None:
            continue
        full = (root / str(rel)).resolve()
        if not full.is_relative_to(root):
            raise InputError(manifest, f"row {row}: path {rel!r} points outside the dataset folder")
        key = full.relative_to(root).as_posix()
        if key not in present:
            if not full.exists():
                raise InputError(manifest, f"row {row}: {rel} not found in {ds.root}")
            continue  # e.g. a file with an extension frbench does not read
        ds.meta[key] = ImageMeta(**{c: _int_or_none(cols[c][row]) for c in ("sample", "seed", "context_row") if c in cols})
    ds.manifest = manifest
    ds.contexts_hint = manifest_contexts(table.schema.metadata, ds.root)


def manifest_contexts(metadata: Optional[dict[bytes, bytes]], root: Path) -> Optional[Path]:
    """The identity-contexts file a manifest's schema metadata names (relative paths from ``root``)."""
    hint = (metadata or {}).get(b"frbench.contexts") or (metadata or {}).get(b"contexts")
    if not hint:
        return None
    p = Path(hint.decode("utf-8"))
    return p if p.is_absolute() else root / p


def generated_contexts(folder: Path) -> Optional[Path]:
    """The identity-contexts file ``frbench generate`` recorded in ``folder/generate.json``, if any."""
    gen = folder / "generate.json"
    if not gen.is_file():
        return None
    try:
        src = json.loads(gen.read_text()).get("identities")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return Path(src) if src else None


def _int_or_none(v: object) -> Optional[int]:
    if v is None:
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if f != f else int(f)


def select(ds: ImageFolderDataset, identities: Optional[int] = None, per_identity: Optional[int] = None,
           min_images: int = 2) -> Selection:
    """The first ``identities`` identity folders with at least ``min_images`` images, and the first
    ``per_identity`` images (sorted) of each. ``None`` means all."""
    chosen: list[Identity] = []
    skipped: list[dict[str, object]] = []
    for ident in ds.identities:
        if identities is not None and len(chosen) >= identities:
            break
        if len(ident.files) < min_images:
            reason = "empty folder" if not ident.files else f"{len(ident.files)} image{'s' if len(ident.files) != 1 else ''} (< {min_images})"
            skipped.append({"identity": ident.name, "index": ident.index, "reason": reason})
            continue
        chosen.append(ident)
    files: list[str] = []
    labels: list[int] = []
    for ident in chosen:
        take = ident.files if per_identity is None else ident.files[:per_identity]
        files.extend(take)
        labels.extend([ident.index] * len(take))
    return Selection(ds, files, np.asarray(labels, np.int64), chosen, skipped)


# --------------------------------------------------------------------------------------- decoding
def read_bgr(path: str | Path) -> np.ndarray:
    """Decode one image file to uint8 BGR ``H×W×3`` (grey and alpha converted); InputError if unreadable."""
    path = Path(path)
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise InputError(path, f"cannot read image ({err.strerror or err})") from None
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise InputError(path, "unreadable image (corrupt or unsupported format: cannot decode)")
    return img


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode one image file to uint8 RGB ``H×W×3``; InputError if unreadable."""
    return cv2.cvtColor(read_bgr(path), cv2.COLOR_BGR2RGB)


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Whole-image resize to ``(height, width)``: area when shrinking, bilinear when enlarging."""
    h, w = img.shape[:2]
    if (h, w) == tuple(size):
        return img
    interp = cv2.INTER_AREA if h >= size[0] and w >= size[1] else cv2.INTER_LINEAR
    return cv2.resize(img, (size[1], size[0]), interpolation=interp)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file (decodes it)."""
    return read_rgb(path).shape[:2]  # type: ignore[return-value]


def iter_batches(paths: list[Path], batch_size: int, size: Optional[tuple[int, int]] = (FR_SIZE, FR_SIZE),
                 workers: int = 4) -> Iterator[np.ndarray]:
    """uint8 RGB ``B×H×W×3`` batches of ``paths`` in order, each image resized to ``size``.

    ``size=None`` keeps the first image's size and resizes any image that differs to it. Decoding
    runs on ``workers`` threads (OpenCV releases the GIL); at most two batches are in flight.
    """
    if not paths:
        return
    target = tuple(size) if size is not None else image_size(paths[0])

    def load(p: Path) -> np.ndarray:
        return resize(read_rgb(p), target)  # type: ignore[arg-type]

    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending = None
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            future = [pool.submit(load, p) for p in chunk]
            if pending is not None:
                yield np.stack([f.result() for f in pending])
            pending = future
        if pending is not None:
            yield np.stack([f.result() for f in pending])
