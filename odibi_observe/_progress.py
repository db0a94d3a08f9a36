"""Progress on the terminal for long commands (reconcile, health), with rich.

Only when stderr is a terminal: in cron, systemd, CI or Kubernetes logs a progress bar is
noise (a line per redraw), and a nightly job's log should hold the summary only. Drawn on
stderr, so stdout (a summary, JSON) stays clean for pipes; erased when done.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, Final, TextIO

_INTERVAL: Final = 0.2


def _console(stream: TextIO) -> Any:
    from rich.console import Console

    no_color = bool(os.environ.get("NO_COLOR"))
    return Console(
        file=stream,
        force_terminal=True,
        no_color=no_color,
        highlight=False,
        markup=False,
        emoji=False,
        color_system=None if no_color else "auto",
    )


def enabled_for(stream: TextIO, enabled: bool | None) -> bool:
    """``enabled``, or (None) whether ``stream`` is a terminal."""
    if enabled is not None:
        return enabled
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Bar:
    """``bar(phase, done, total)``: one rich progress bar whose phase may change; ``total``
    None shows a running count. Redrawn at most five times a second."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        enabled: bool | None = None,
        bytes_phases: tuple[str, ...] = (),
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled_for(self.stream, enabled)
        self.bytes_phases = bytes_phases
        self._last = 0.0
        self._progress: Any = None
        self._task: Any = None

    def _start(self) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=28),
            TaskProgressColumn(),
            TextColumn("{task.fields[amount]}"),
            console=_console(self.stream),
            transient=True,
            auto_refresh=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("", total=None, amount="")

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < _INTERVAL and (total is None or done < total):
            return
        self._last = now
        if self._progress is None:
            self._start()
        if total:
            amount = (
                f"{_size(done)} / {_size(total)}"
                if phase in self.bytes_phases
                else f"{done:,} / {total:,}"
            )
        else:
            amount = f"{done:,}"
        self._progress.update(
            self._task,
            description=phase,
            completed=min(done, total or done),
            total=total or None,
            amount=amount,
        )
        self._progress.refresh()

    def finish(self) -> None:
        """Erase the bar, so that what is printed next starts clean."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


@contextlib.contextmanager
def working(
    description: str, *, enabled: bool | None = None, stream: TextIO | None = None
) -> Iterator[None]:
    """A spinner with ``description`` while the block runs (a terminal only)."""
    out = stream or sys.stderr
    if not enabled_for(out, None if enabled else False):
        yield
        return
    with _console(out).status(description, spinner="dots"):
        yield


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover - unreachable
