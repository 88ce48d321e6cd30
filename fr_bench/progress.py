"""Rich progress bars shared by every long-running stage."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

console = Console(stderr=True)


def _enabled() -> bool:
    return os.environ.get("FRBENCH_NO_PROGRESS", "") == "" and sys.stderr.isatty()


@contextmanager
def progress_factory() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yield ``make(description, total) -> advance(n)``; bars render only on a terminal."""
    if not _enabled():
        yield lambda desc, total: (lambda n: None)
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bars:

        def make(desc: str, total: int) -> Callable[[int], None]:
            task = bars.add_task(desc, total=total or None, rate="")

            def advance(n: int) -> None:
                bars.advance(task, n)
                speed = bars.tasks[task].speed
                if speed:
                    bars.update(task, rate=f"{speed:,.0f}/s")

            return advance

        yield make
