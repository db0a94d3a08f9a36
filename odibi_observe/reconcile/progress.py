"""A plain progress line on stderr, for reconciliations of long windows.

Only when stderr is a terminal: in cron, systemd or Kubernetes logs a progress bar is noise (a
line per redraw), and a nightly job's log should hold the summary only. Redrawn at most five
times a second with a carriage return; standard library only.
"""

from __future__ import annotations

import sys
import time
from typing import Final, TextIO

_WIDTH: Final = 28
_INTERVAL: Final = 0.2
_BYTES_PHASES: Final = ("reading traces",)


class Progress:
    """``progress(phase, done, total)`` callable for :class:`~.engine.ReconcileOptions`."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last = 0.0
        self._shown = 0

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < _INTERVAL and (total is None or done < total):
            return
        self._last = now
        if total:
            share = min(1.0, done / total)
            filled = int(share * _WIDTH)
            amount = (f"{_size(done)} / {_size(total)}" if phase in _BYTES_PHASES
                      else f"{done:,} / {total:,}")
            text = f"{phase} [{'#' * filled}{'.' * (_WIDTH - filled)}] {share:4.0%}  {amount}"
        else:
            text = f"{phase}: {done:,}"
        self._write(text)

    def _write(self, text: str) -> None:
        padding = " " * max(0, self._shown - len(text))
        self.stream.write(f"\r{text}{padding}")
        self.stream.flush()
        self._shown = len(text)

    def finish(self) -> None:
        """Erase the line, so that what is printed next starts clean."""
        if self.enabled and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover - unreachable
