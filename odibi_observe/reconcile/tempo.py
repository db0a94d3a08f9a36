"""``tempo:URL`` — spans from Grafana Tempo's HTTP API.

Two calls, as Tempo documents them:

1. ``GET /api/search?q=<TraceQL>&start=<s>&end=<s>&limit=<n>&spss=<n>`` finds the traces that
   hold an odibi node span (default query ``{ span.odibi.run_id != "" }``) in a time slice;
2. ``GET /api/traces/<traceID>`` returns each trace (protobuf's JSON mapping: base64 ids,
   ``batches``), whose odibi spans are decoded like any OTLP document.

**No silent truncation.** Tempo answers a search with at most ``limit`` traces and says nothing
about the rest. So the window is searched slice by slice (one hour by default), and a slice
that comes back *full* — ``limit`` traces — is split in two and searched again, down to one
second. Only a single second holding more than ``limit`` matching traces is reported as an
error (raise ``--tempo-limit``).

**Failures cost their slice only.** A search that times out or fails is reported with its time
range and recorded as a gap: the catalog's runs in that range are counted as unchecked instead
of being reported as missing from the traces. A trace that cannot be fetched is a gap over the
trace's own time span. Only when no search at all succeeds is Tempo unreadable
(:class:`~odibi_observe.reconcile.sources.SourceError`).
"""

from __future__ import annotations

import http.client
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterator
from typing import Any, ClassVar

from odibi_observe._spandecode import iter_request_spans
from odibi_observe.config import hide_password
from odibi_observe.reconcile.model import ReadLog, ReadRange, TraceRun, iso_ns
from odibi_observe.reconcile.sources import SourceError, SourceOptions, TraceSource
from odibi_observe.reconcile.span_decode import span_to_run

_NS = 1_000_000_000


class TempoError(Exception):
    """One request to Tempo failed; the message says how (timeout, HTTP status, bad JSON)."""


class TempoSource(TraceSource):
    """Spans from Grafana Tempo; see the module docstring."""

    scheme: ClassVar[str] = "tempo"

    def __init__(self, url: str, options: SourceOptions | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SourceError(
                f"tempo:{hide_password(url)}: expected an http(s) URL of Tempo's "
                "query frontend, e.g. tempo:http://tempo:3200"
            )
        self.base = url.rstrip("/")
        self.options = options or SourceOptions()
        if self.options.tempo_limit < 1 or self.options.tempo_slice_seconds < 1:
            raise SourceError("--tempo-limit and the slice length must be positive")
        self.requests = 0

    @classmethod
    def from_spec(cls, location: str, options: SourceOptions) -> TempoSource:
        return cls(location, options)

    def describe(self) -> str:
        return f"{self.scheme}:{hide_password(self.base)}"

    # -- HTTP --------------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json", **dict(self.options.tempo_headers)}
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) checked
        self.requests += 1
        try:
            with urllib.request.urlopen(  # noqa: S310 - scheme checked in __init__
                request, timeout=self.options.tempo_timeout
            ) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").strip()
            raise TempoError(f"HTTP {exc.code}" + (f": {detail}" if detail else "")) from None
        except TimeoutError:
            raise TempoError(f"timed out after {self.options.tempo_timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            if isinstance(reason, TimeoutError):
                raise TempoError(f"timed out after {self.options.tempo_timeout:g} s") from None
            raise TempoError(f"{type(exc).__name__}: {reason}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise TempoError(f"answer is not JSON: {body[:120]!r}") from None

    # -- reading -----------------------------------------------------------------------------

    def read(self, read_range: ReadRange, log: ReadLog) -> Iterator[TraceRun]:
        source = self.describe()
        opts = self.options
        first = read_range.start_ns // _NS
        last = math.ceil(read_range.end_ns / _NS)
        slices: deque[tuple[int, int]] = deque(
            (s, min(s + opts.tempo_slice_seconds, last))
            for s in range(first, last, opts.tempo_slice_seconds)
        )
        total = len(slices)
        done = searched = failed = 0
        last_failure = ""
        seen: set[str] = set()
        while slices:
            start, end = slices.popleft()
            params = {
                "q": opts.tempo_query,
                "start": start,
                "end": end,
                "limit": opts.tempo_limit,
                "spss": opts.tempo_spss,
            }
            where = f"search {iso_ns(start * _NS)} .. {iso_ns(end * _NS)}"
            try:
                answer = self._get("/api/search", params)
                traces = answer.get("traces") or [] if isinstance(answer, dict) else None
                if not isinstance(traces, list):
                    raise TempoError("answer has no 'traces' list")
            except TempoError as exc:
                failed += 1
                last_failure = str(exc)
                log.add_error(source, where, f"{exc}; runs in this range are not checked")
                log.gap(start * _NS, end * _NS, source)
                done += 1
                continue
            searched += 1
            if len(traces) >= opts.tempo_limit:
                if end - start > 1:
                    middle = (start + end) // 2
                    slices.appendleft((middle, end))
                    slices.appendleft((start, middle))
                    total += 1
                    continue
                log.add_error(
                    source,
                    where,
                    f"{len(traces)} traces in one second reach the "
                    f"search limit; some may be missing (raise --tempo-limit)",
                )
            for hit in traces:
                trace_id = str(hit.get("traceID") or "") if isinstance(hit, dict) else ""
                if not trace_id or trace_id in seen:
                    continue
                seen.add(trace_id)
                yield from self._trace(trace_id, hit, source, read_range, log)
            done += 1
            log.tick("reading Tempo", done, total)
        if not searched and failed:
            raise SourceError(f"{source}: no search succeeded ({last_failure})")

    def _trace(
        self, trace_id: str, hit: dict[str, Any], source: str, read_range: ReadRange, log: ReadLog
    ) -> Iterator[TraceRun]:
        origin = f"tempo trace {trace_id}"
        try:
            document = self._get(f"/api/traces/{urllib.parse.quote(trace_id)}")
            pairs = list(iter_request_spans(document))
        except (TempoError, ValueError) as exc:
            log.add_error(source, origin, f"{exc}; the trace's runs are not checked")
            try:
                start = int(hit.get("startTimeUnixNano") or 0)
                duration = int(float(hit.get("durationMs") or 0) * 1_000_000)
            except (TypeError, ValueError):
                start, duration = 0, 0
            if start:
                log.gap(start, start + duration + 1, source)
            return
        for resource, span in pairs:
            run = span_to_run(
                span, resource, origin=origin, source=source, read_range=read_range, log=log
            )
            if run is not None:
                yield run
