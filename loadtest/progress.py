"""Rich progress bars on stderr, so stdout stays one machine-readable JSON document."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["Progress", "bench_progress", "console"]

# Not a terminal (a log file, CI): wide enough that the summary table keeps one line per row.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def bench_progress(quiet: bool = False) -> Progress:
    """A progress display for a benchmark run (``quiet`` turns it off; it is off anyway when
    stderr is not a terminal, apart from the final lines)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )
