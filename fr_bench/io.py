"""Atomic file writes: a reader never sees a half-written artefact."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; artefacts get the usual permissions
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_writable(path: str | Path, *, directory: bool = False) -> None:
    """Fail before any work when ``path`` (a file, or a folder with ``directory``) cannot be written:
    one :class:`~fr_bench.errors.InputError` naming it. Probes the nearest existing folder with a
    temporary file (removed at once), so read-only mounts and pseudo file systems are caught too."""
    from .errors import InputError

    p = Path(path)
    if p.exists() and p.is_dir() != directory:
        raise InputError(p, "is a folder, not a file" if not directory else "is a file, not a folder")
    anc = p if (directory and p.exists()) else p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise InputError(p, f"cannot be created: {anc} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".frbench-probe.", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise InputError(p, f"not writable ({err.strerror or type(err).__name__} in {anc})") from None


def torch_load_problem(err: BaseException) -> str:
    """One readable clause for a failed ``torch.load(weights_only=True)``: PyTorch's multi-paragraph
    weights-only explanation becomes "unsafe pickle: refused …", other errors their first line."""
    import re

    text = str(err).strip()
    if "Weights only load failed" in text or "weights_only" in text:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text) or re.search(r"(?:got|global) (<class '[^']+'>)", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"unsafe pickle: refused to load it{what} — the file holds Python objects, not only tensors, and "
                "frbench never executes pickled code (weights_only=True); nothing in it was run")
    first = text.splitlines()[0][:160] if text else type(err).__name__
    return f"{type(err).__name__}: {first}" if not first.startswith(type(err).__name__) else first
