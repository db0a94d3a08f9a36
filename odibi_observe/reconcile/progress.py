"""The reconciliation's progress bar on stderr (rich; a terminal only).

See :mod:`odibi_observe._progress`: silent in cron, systemd, CI and Kubernetes logs, where a bar
is a line per redraw; erased when the reconciliation ends.
"""

from __future__ import annotations

from typing import Final, TextIO

from odibi_observe._progress import Bar

_BYTES_PHASES: Final = ("reading traces",)


class Progress(Bar):
    """``progress(phase, done, total)`` callable for :class:`~.engine.ReconcileOptions`."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        super().__init__(stream, enabled=enabled, bytes_phases=_BYTES_PHASES)
