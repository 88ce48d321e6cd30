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
