"""Content-addressed stage directories, DONE markers and the run lock.

A stage's output lives in ``<workdir>/runs/<run>/<stage>-<hash12>/`` where the hash covers the stage's
config section and the hashes of its inputs. The directory is finished only once ``DONE.json`` has
been written atomically (last); anything without it is work in progress that the stage resumes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FrBenchError
from .io import sha256_file, write_json_atomic

DONE = "DONE.json"


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON-serialisable object, independent of key order."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def path_digest(path: str | Path) -> str:
    """Digest of a user-supplied input: a file's sha256, or a folder's listing (names and sizes).

    Folders are digested by listing rather than content so that half-a-million-image datasets hash in
    seconds; any added, removed, renamed or resized file changes the digest.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            h.update(f"{p.relative_to(path).as_posix()}\0{p.stat().st_size}\n".encode())
    return h.hexdigest()


class DigestCache:
    """Content digests of the model files a stage reads (weights, FR models, detectors), remembered by
    (path, size, mtime) in ``<workdir>/cache/digests.json`` so that multi-GB weights are read once.

    Weights replaced at the same path change the digest, hence the stage hash; weights copied or moved
    elsewhere keep it (only a re-read). Nothing is written until :meth:`save`, so a dry run writes nothing."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self._known: dict[str, Any] = {}
        self._dirty = False
        if path is not None and path.is_file():
            try:
                self._known = json.loads(path.read_text())
            except ValueError:
                self._known = {}  # a damaged cache only costs a re-read

    def _file(self, p: Path) -> str:
        st = p.stat()
        key = str(p.resolve())
        stamp = [st.st_size, st.st_mtime_ns]
        hit = self._known.get(key)
        if isinstance(hit, dict) and hit.get("stamp") == stamp:
            return str(hit["sha256"])
        digest = sha256_file(p)
        self._known[key] = {"stamp": stamp, "sha256": digest}
        self._dirty = True
        return digest

    def of(self, path: str | Path | None) -> str | None:
        """sha256 of a file; of a folder, over every file's relative name and sha256; ``absent`` when the
        path does not exist (preflight reports it before anything runs); None for no path."""
        if path is None:
            return None
        p = Path(path)
        if p.is_file():
            return self._file(p)
        if not p.is_dir():
            return "absent"
        h = hashlib.sha256()
        for f in sorted(p.rglob("*")):
            if f.is_file() and not f.name.startswith("."):
                h.update(f"{f.relative_to(p).as_posix()}\0{self._file(f)}\n".encode())
        return h.hexdigest()

    def save(self) -> None:
        if self.path is not None and self._dirty:
            try:
                write_json_atomic(self.path, self._known)
            except OSError:
                return  # a cache: an unwritable one only costs re-reading next time
            self._dirty = False


@dataclass(frozen=True)
class StageDir:
    """One stage's output directory."""

    path: Path

    @property
    def done_file(self) -> Path:
        return self.path / DONE

    def is_done(self) -> bool:
        return self.done_file.is_file()

    def read_done(self) -> dict[str, Any]:
        return json.loads(self.done_file.read_text())

    def mark_done(self, info: dict[str, Any]) -> None:
        """Write DONE.json last and atomically: from here on the stage is finished and immutable."""
        write_json_atomic(self.done_file, {**info, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


class RunLock:
    """An exclusive, non-blocking lock on a run directory (released when the process dies)."""

    def __init__(self, run_dir: str | Path, suffix: str = ""):
        self.path = Path(run_dir) / f".lock{suffix}"
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FrBenchError(f"{self.path.parent}: another frbench run (pid {holder}) is using this run directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
