"""The dead letter: where records a sink can never export go, with the reason.

A record that can never be exported (see "Poison records" in :mod:`odibi_observe.sinks.base`)
must neither stop its sink for good nor vanish. The delivery layer hands it here, and this:

* counts it in ``odibi_observe_dead_letter_total{sink}``;
* logs it (once a minute per sink at WARNING, with the reason);
* when there is a spool directory, appends one JSON line per record to
  ``<spool dir>/dead-letter/dead-letter.jsonl``::

      {"time": "2026-12-06T21:03:11.402Z", "sink": "otel", "reason": "TypeError: ...",
       "event": {"kind": "finished", "record": {...}}}

  (``"payload"`` instead of ``"event"`` for a spooled frame that did not decode — its JSON,
  or its text when it is not JSON — with its spool ``"position"``). The file is bounded:
  past half of ``max_bytes`` it is rotated to ``dead-letter.jsonl.1`` (the previous ``.1``
  is deleted), so the directory never holds more than ``max_bytes``; what rotation deletes
  was counted already;
* keeps per-sink totals and the latest entry for the sidecar's ``/healthz``.

Writing never raises: a full disk leaves the count and the log line.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from odibi_observe._redact import safe_text
from odibi_observe._selfmetrics import SelfMonitor
from odibi_observe.conventions import SELF_METRICS
from odibi_observe.record import RunEvent

#: The directory name inside the spool directory.
DEAD_LETTER_DIR: Final = "dead-letter"
#: The file dead letters are appended to, inside :data:`DEAD_LETTER_DIR`.
DEAD_LETTER_FILE: Final = "dead-letter.jsonl"
#: Default bound of the directory (the file and its one rotated predecessor).
DEAD_LETTER_MAX_BYTES: Final = 64 * 1024 * 1024
#: Bound of a reason's text.
MAX_REASON: Final = 2_000


class DeadLetter:
    """Counts, logs and (with a directory) keeps what a sink rejected for good."""

    def __init__(
        self,
        monitor: SelfMonitor,
        directory: str | os.PathLike[str] | None = None,
        *,
        max_bytes: int = DEAD_LETTER_MAX_BYTES,
    ) -> None:
        self.monitor = monitor
        self.directory = None if directory is None else Path(directory)
        self.max_bytes = max_bytes
        self.totals: dict[str, int] = {}
        self.last: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @classmethod
    def in_spool_dir(
        cls, monitor: SelfMonitor, spool_dir: str | os.PathLike[str] | None
    ) -> DeadLetter:
        """The dead letter of a process whose spool is ``spool_dir`` (None: count and log)."""
        return cls(monitor, None if not spool_dir else Path(spool_dir) / DEAD_LETTER_DIR)

    @property
    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / DEAD_LETTER_FILE

    def reject(self, sink: str, rejections: Sequence[tuple[RunEvent, str]]) -> None:
        """Dead-letter ``rejections`` (event, reason) of ``sink``."""
        entries = [
            {
                "sink": sink,
                "reason": safe_text(reason, MAX_REASON),
                "run_id": event.record.run_id,
                "event": _event_json(event),
            }
            for event, reason in rejections
        ]
        self._add(sink, entries)

    def reject_payload(self, sink: str, payload: bytes, position: object, reason: str) -> None:
        """Dead-letter a spooled frame that is not a run event."""
        text = payload.decode("utf-8", "backslashreplace")
        try:
            frame: Any = json.loads(text)  # kept as JSON when it is JSON: easier to fix
        except ValueError:
            frame = text
        self._add(
            sink,
            [
                {
                    "sink": sink,
                    "reason": safe_text(reason, MAX_REASON),
                    "position": str(position),
                    "payload": frame,
                }
            ],
        )

    def _add(self, sink: str, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        now = now.replace("+00:00", "Z")
        for entry in entries:
            entry["time"] = now
        self.monitor.dead_lettered(sink, len(entries))
        where = f"kept in {self.path}" if self.path is not None else "not kept (no spool_dir)"
        self.monitor.warn_once_per_minute(
            f"dead-letter:{sink}",
            "odibi-observe sink %r can never export %d record(s) (%s), dead-lettered and "
            f"skipped: %s; counted in {SELF_METRICS.dead_letter.prometheus}, %s",
            sink,
            len(entries),
            entries[0].get("run_id", "undecodable frame"),
            entries[0]["reason"],
            where,
        )
        with self._lock:
            self.totals[sink] = self.totals.get(sink, 0) + len(entries)
            self.last = {k: entries[-1][k] for k in ("time", "sink", "reason")}
            if self.path is not None:
                self._write(entries)

    def _write(self, entries: list[dict[str, Any]]) -> None:
        assert self.directory is not None
        assert self.path is not None
        data = "".join(
            json.dumps(e, separators=(",", ":"), default=str) + "\n" for e in entries
        ).encode("utf-8", "backslashreplace")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.max_bytes // 2:
                os.replace(self.path, self.path.with_name(DEAD_LETTER_FILE + ".1"))
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data[: self.max_bytes // 2])
            finally:
                os.close(fd)
        except OSError as exc:
            self.monitor.warn_once_per_minute(
                "dead-letter-write",
                "odibi-observe: cannot write the dead letter in %s: %s "
                "(the records are counted and logged only)",
                self.directory,
                exc,
            )

    def health(self) -> Mapping[str, Any]:
        """What ``/healthz`` shows: totals per sink, where the file is, the latest entry."""
        with self._lock:
            return {
                "total": sum(self.totals.values()),
                "by_sink": dict(self.totals),
                "file": None if self.path is None else str(self.path),
                "last": self.last,
            }


def _event_json(event: RunEvent) -> Any:
    try:
        return json.loads(event.to_json())
    except Exception:  # a record too broken even to serialise: keep what repr says
        return safe_text(repr(event), 10_000)
