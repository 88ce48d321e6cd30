"""User-facing errors.

Every problem caused by the user's input (a file, a config key, an option) is raised as a
:class:`FrBenchError` whose message is one line naming the file and the problem. The CLI prints that
line and exits non-zero; tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

from pathlib import Path


class FrBenchError(Exception):
    """An error the user can fix; ``str(err)`` is a single line."""

    exit_code = 2


class InputError(FrBenchError):
    """A user-supplied file is missing, malformed or unsafe."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class ConfigError(FrBenchError):
    """A config file or option is invalid."""
