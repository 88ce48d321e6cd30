"""Training-set discovery: what images a dataset holds and which identity each belongs to.

Three forms are read:

* an **image folder**: one sub-folder per identity (sorted names → class 0, 1, …), images inside
  (``.jpg .jpeg .png .bmp .webp .tif .tiff``, any case; other files are ignored);
* an **frbench dataset manifest**: ``manifest.parquet`` (the path given, or inside the folder
  given) with columns ``identity`` and ``path`` (``frbench generate`` and ``frbench align`` write
  one); paths are relative to the manifest's folder and must stay inside it; rows without a path
  (inputs alignment skipped) are ignored;
* an insightface **RecordIO** pair ``train.rec`` / ``train.idx`` (the folder holding them or the
  ``.rec`` path); labels come from the record headers while the cache is built.

Nothing is decoded here; :mod:`fr_bench.data.image_cache` does that once.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .recordio import RecordIOReader, find_recordio

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MANIFEST_NAME = "manifest.parquet"


@dataclass
class TrainSet:
    """Items of a training set; ``labels`` is None for RecordIO until the cache has read them."""

    kind: str  # "folder" | "manifest" | "recordio"
    root: Path
    fingerprint: str
    paths: list[str] = field(default_factory=list)  # folder/manifest: one file per item
    labels: np.ndarray | None = None
    identities: list[str] = field(default_factory=list)
    rec_path: Path | None = None
    keys: list[int] = field(default_factory=list)  # recordio: image record keys
    offsets: list[int] = field(default_factory=list)
    empty_identities: int = 0

    def __len__(self) -> int:
        return len(self.keys) if self.kind == "recordio" else len(self.paths)

    def describe(self, i: int) -> str:
        """Where item ``i`` comes from, for messages."""
        if self.kind == "recordio":
            return f"{self.rec_path} (record {self.keys[i]} at offset {self.offsets[i]})"
        return self.paths[i]


def open_train_set(path: str | Path) -> TrainSet:
    """Recognise the dataset form at ``path`` and list its items."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "dataset not found")
    rec = find_recordio(path)
    if rec is not None:
        return _scan_recordio(*rec)
    if path.is_file() and path.suffix == ".parquet":
        return _scan_manifest(path)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return _scan_manifest(path / MANIFEST_NAME)
    if path.is_dir():
        return _scan_folder(path)
    raise InputError(path, "not a dataset: expected a folder of identity sub-folders, a manifest.parquet or train.rec/train.idx")


def first_rows(labels: np.ndarray, identities: int | None, per_identity: int | None) -> np.ndarray:
    """Indices of the items of the first ``identities`` classes (class order = sorted identity names)
    and, within each, of its first ``per_identity`` items in dataset order; None means all."""
    labels = np.asarray(labels)
    keep = np.ones(len(labels), bool)
    if identities is not None:
        classes = np.unique(labels)[:identities]
        keep &= np.isin(labels, classes)
    if per_identity is not None:
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
        rank = np.empty(len(labels), np.int64)
        rank[order] = np.arange(len(labels)) - starts
        keep &= rank < per_identity
    return np.flatnonzero(keep)


def select(ts: TrainSet, identities: int | None, per_identity: int | None) -> TrainSet:
    """The first N identities × first K images of a folder or manifest set, as a set of its own
    (own fingerprint, so its cache holds only the selected images). RecordIO labels are only known
    once decoded: the trainer selects those rows from the cache instead."""
    if (identities is None and per_identity is None) or ts.kind == "recordio":
        return ts
    rows = first_rows(ts.labels, identities, per_identity)
    classes, labels = np.unique(ts.labels[rows], return_inverse=True)
    fp = _digest([ts.fingerprint, f"identities={identities}", f"per_identity={per_identity}"])
    return TrainSet(ts.kind, ts.root, fp, paths=[ts.paths[i] for i in rows], labels=labels.astype(np.int64),
                    identities=[ts.identities[c] for c in classes], empty_identities=ts.empty_identities)


def check_identities(path: Path, n_identities: int, what: str = "identities") -> None:
    if n_identities < 2:
        raise InputError(path, f"dataset has {n_identities} {what} with usable images; a recognizer needs at least 2 (one sub-folder per identity)")


def _digest(parts: list[str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def _scan_folder(root: Path) -> TrainSet:
    subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    paths: list[str] = []
    labels: list[int] = []
    identities: list[str] = []
    stamp: list[str] = ["folder"]
    empty = 0
    for name in subdirs:
        files = sorted(
            (e for e in os.scandir(root / name) if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS and not e.name.startswith(".")),
            key=lambda e: e.name,
        )
        if not files:
            empty += 1
            continue
        label = len(identities)
        identities.append(name)
        for e in files:
            st = e.stat()
            paths.append(e.path)
            labels.append(label)
            stamp.append(f"{name}/{e.name}:{st.st_size}:{st.st_mtime_ns}")
    if not subdirs:
        raise InputError(root, "no identity sub-folders found (expected one sub-folder of images per identity)")
    check_identities(root, len(identities), "identity folders")
    return TrainSet("folder", root, _digest(stamp), paths=paths, labels=np.asarray(labels, np.int64), identities=identities, empty_identities=empty)


def _scan_manifest(manifest: Path) -> TrainSet:
    import pandas as pd

    try:
        df = pd.read_parquet(manifest)
    except Exception as err:  # pyarrow raises several types for a broken file
        raise InputError(manifest, f"cannot read manifest ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})") from None
    missing = [c for c in ("identity", "path") if c not in df.columns]
    if missing:
        raise InputError(manifest, f"manifest lacks column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns))})")
    # rows without a path are inputs that produced no image (e.g. `frbench align` skips); not images
    df = df[df["path"].notna() & (df["path"].astype(str) != "")].reset_index(drop=True)
    root = manifest.parent.resolve()
    paths: list[str] = []
    for row, rel in enumerate(df["path"].astype(str)):
        full = (root / rel).resolve()
        if not full.is_relative_to(root):
            raise InputError(manifest, f"row {row}: path {rel!r} points outside the manifest's folder")
        paths.append(str(full))
    ids = df["identity"]
    uniq = sorted(ids.unique().tolist(), key=lambda v: (not isinstance(v, (int, np.integer)), v if isinstance(v, (int, np.integer)) else str(v)))
    lookup = {v: i for i, v in enumerate(uniq)}
    labels = np.asarray([lookup[v] for v in ids.tolist()], np.int64)
    check_identities(manifest, len(uniq))
    stamp = ["manifest", hashlib.sha256(manifest.read_bytes()).hexdigest()]
    for p in paths:
        try:
            st = os.stat(p)
            stamp.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            stamp.append(f"{p}:missing")
    fp = _digest(stamp)
    return TrainSet("manifest", manifest.parent, fp, paths=paths, labels=labels, identities=[str(v) for v in uniq])


def _scan_recordio(rec: Path, idx: Path) -> TrainSet:
    with RecordIOReader(rec, idx) as reader:
        keys = reader.image_keys
        offsets = [reader.offset(k) for k in keys]
    parts = ["recordio"]
    for p in (rec, idx):
        st = p.stat()
        parts.append(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    if not keys:
        raise InputError(rec, "RecordIO file holds no image records")
    return TrainSet("recordio", rec.parent, _digest(parts), rec_path=rec, keys=keys, offsets=offsets)
