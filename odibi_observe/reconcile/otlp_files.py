"""``otlp-json:PATH`` — spans from OTLP-JSON lines files, the Collector ``file`` exporter format.

PATH is a file, a directory (every ``*.json*`` and ``*.gz`` file below it: the live file and
its rotated, possibly gzip-compressed, predecessors) or a glob. Gzip is recognised by its magic
bytes, not its name. A file last modified before the read range starts is skipped without
being opened: a span is written after it ends, so such a file cannot hold a span that started
in the range — which keeps a nightly reconciliation over a month of rotated files cheap.

**Two decoders.** Reading is most of a reconciliation's cost (a line holds hundreds of spans,
and ``json.loads`` alone costs ~9 µs per span, building a dict for every attribute). So a line
that passes a structural check — it opens and closes like a whole request, its braces and
brackets balance — is *scanned* by one compiled regular expression that matches a node span in
the shape odibi-observe writes and a Collector passes on (ids, times, then the ``odibi.*``
attributes in the order :func:`~odibi_observe.sinks.otel.span_attributes` writes them): about
3 µs per span. The scan must account for every ``odibi.run_id`` attribute in the line; if it
does not — another attribute order, a wrong attribute type, a value it does not expect — the
line is decoded in full by :mod:`~odibi_observe._spandecode`, the decoder every reader of node
spans uses, which also produces the precise error messages. Failed and crashed runs (a few per
cent) are always decoded in full for their error message. Both paths produce identical runs
(a test compares them).

Bad input is reported with file and line and skipped: undecodable lines, a gzip file cut short
(everything before the cut is still read), files that are not OTLP-JSON at all.
"""

from __future__ import annotations

import bisect
import glob
import gzip
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, Final

from odibi_observe._spandecode import (
    A_RUN_ID,
    SERVICE_NAME,
    attribute_of,
    decode_attributes,
    iter_request_spans,
    resource_identity,
)
from odibi_observe.conventions import FIELDS as F
from odibi_observe.conventions import (
    RESOURCE_HOST,
    RESOURCE_PID,
    USER_ATTRIBUTE_PREFIX,
    Field,
)
from odibi_observe.reconcile.model import (
    FUTURE_SKEW_NS,
    PipelineRunSide,
    ReadLog,
    ReadRange,
    TraceRun,
)
from odibi_observe.reconcile.pipelines import otlp_pipeline_runs
from odibi_observe.reconcile.sources import SourceError, TraceSource
from odibi_observe.reconcile.span_decode import span_to_run

_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"

# --- the scanner ------------------------------------------------------------------------------

_STR: Final = r'"([^"\\]*(?:\\.[^"\\]*)*)"'  # a JSON string, its content captured
_STR_ANY: Final = r'"[^"\\]*(?:\\.[^"\\]*)*"'


def _kv_str(field: Field) -> str:
    return (
        r'\{"key":"'
        + re.escape(attribute_of(field))
        + r'","value":\{"stringValue":'
        + _STR
        + r"\}\}"
    )


def _kv_int(field: Field) -> str:
    return r'\{"key":"' + re.escape(attribute_of(field)) + r'","value":\{"intValue":"(-?\d+)"\}\}'


#: One node span, up to the end of its attributes. Groups: 1 trace id, 2 span id, 3 parent,
#: 4 start, 5 end, then run_id, project, pipeline, pipeline_run_id, node, attempt, status,
#: rows, duration, environment, suggestions (raw), error.type, the remaining attributes (raw).
_SPAN_RE: Final = re.compile(
    r'\{"traceId":"([0-9a-f]{32})","spanId":"([0-9a-f]{16})"'
    r'(?:,"traceState":' + _STR_ANY + r')?(?:,"parentSpanId":"([0-9a-f]{16})?")?'
    r'(?:,"flags":\d+)?(?:,"name":' + _STR_ANY + r')?(?:,"kind":\d+)?'
    r',"startTimeUnixNano":"(\d+)","endTimeUnixNano":"(\d+)","attributes":\['
    + _kv_str(F.run_id)
    + ","
    + _kv_str(F.project)
    + ","
    + _kv_str(F.pipeline)
    + "(?:,"
    + _kv_str(F.pipeline_run_id)
    + ")?,"
    + _kv_str(F.node)
    + ","
    + _kv_int(F.attempt)
    + ","
    + _kv_str(F.status)
    + "(?:,"
    + _kv_int(F.rows)
    + ")?(?:,"
    + _kv_int(F.duration)
    + ")?,"
    + _kv_str(F.environment)
    + r'(?:,\{"key":"'
    + re.escape(attribute_of(F.suggestions))
    + r'","value":\{"arrayValue":\{"values":\[((?:\{"stringValue":'
    + _STR_ANY
    + r"\},?)*)\]\}\}\})?"
    + "(?:,"
    + _kv_str(F.error)
    + ")?"
    + r'((?:,\{"key":'
    + _STR_ANY
    + r',"value":\{"(?:stringValue|intValue|doubleValue|'
    r'boolValue)":(?:' + _STR_ANY + r"|[-+.\w]+)\}\})*)\]"
)
_RESOURCE_RE: Final = re.compile(r'"resource":\{')
_RUN_ID_KEY: Final = '{"key":"' + A_RUN_ID + '",'
_SPAN_KEY: Final = '"startTimeUnixNano":'
_LINE_HEAD: Final = '{"resourceSpans":['
_LINE_TAIL: Final = "]}]}]}"
#: Statuses whose spans carry no error details: the scanner has all they hold.
_NO_DETAILS: Final = frozenset({"SUCCESS", "RUNNING"})
_DECODER: Final = json.JSONDecoder()
#: All-zero ids, which no span may carry (the full decoder reports them).
_ZERO_IDS: Final = frozenset({"0" * 32, "0" * 16})


class _FullDecode(Exception):
    """The scanner cannot vouch for this line: decode it in full instead."""


def scan_line(
    line: str,
    *,
    origin: str,
    source: str,
    read_range: ReadRange,
    log: ReadLog,
) -> list[TraceRun]:
    """The node spans of one OTLP-JSON line, scanned when possible, else decoded in full.

    Counts ignored and out-of-range spans into ``log`` and reports what cannot be read.
    """
    try:
        return _scan(line, origin, source, read_range, log)
    except _FullDecode:
        return decode_line(line, origin=origin, source=source, read_range=read_range, log=log)


def _scan(
    line: str, origin: str, source: str, read_range: ReadRange, log: ReadLog
) -> list[TraceRun]:
    """:func:`scan_line`'s fast path: :class:`_FullDecode` where it cannot vouch for the line."""
    # A line cut short (a full disk mid-write) does not end like a request; such a line, and
    # anything else unusual, is decoded in full, which reports it.
    if not (line.startswith(_LINE_HEAD) and line.endswith(_LINE_TAIL)):
        raise _FullDecode
    spans = line.count(_SPAN_KEY)
    expected = line.count(_RUN_ID_KEY)
    runs: list[TraceRun] = []
    if not expected:
        log.ignored_spans += spans
        return runs
    matches = list(_SPAN_RE.finditer(line))
    if len(matches) != expected:
        raise _FullDecode
    resources = _resources(line)
    starts = [pos for pos, _ in resources]
    # Usually the line holds one resource, ahead of every span: no lookup per span then.
    single = resources[0][1] if len(resources) == 1 and starts[0] < matches[0].start() else None
    escapes = "\\" in line
    low, high, future = read_range.start_ns, read_range.end_ns, read_range.now_ns + FUTURE_SKEW_NS
    outside = 0
    slow: list[tuple[int, dict[str, object]]] = []
    plain: list[Any] = []  # TraceRun-shaped tuples (see below)
    append = plain.append
    for m in matches:
        (
            trace_id,
            span_id,
            parent,
            start_s,
            end_s,
            run_id,
            project,
            pipeline,
            pipeline_run_id,
            node,
            attempt,
            status,
            rows,
            _duration,
            environment,
            suggestions,
            error_type,
            extra,
        ) = m.groups()
        start = int(start_s)
        end = int(end_s)
        if not low <= start < high and start <= future:
            outside += 1
            continue
        if single is not None:
            host, pid, service = single
        else:
            at = m.start()
            host, pid, service = (
                resources[bisect.bisect_right(starts, at) - 1][1]
                if starts and starts[0] < at
                else ("", 0, "")
            )
        if (
            start > future
            or status not in _NO_DETAILS
            or end < start
            or (escapes and "\\" in m.group(0))
            or not run_id.strip()
            or (trace_id in _ZERO_IDS or span_id in _ZERO_IDS or parent in _ZERO_IDS)
        ):
            # Error details, odd times, escaped text or an id the decoder refuses: this span
            # takes the full decoder.
            slow.append(
                (m.start(), {RESOURCE_HOST: host, RESOURCE_PID: pid, SERVICE_NAME: service})
            )
            continue
        # A plain tuple in TraceRun's field order: what the spill stores anyway, and a third
        # of the cost of building the NamedTuple by keyword for every span.
        append(
            (
                run_id,
                trace_id,
                span_id,
                start,
                end,
                status,
                None if rows is None else int(rows),
                pipeline,
                node,
                project,
                environment,
                parent or None,
                pipeline_run_id or None,
                int(attempt),
                error_type,
                None,
                tuple(v["stringValue"] for v in json.loads(f"[{suggestions}]"))
                if suggestions
                else (),
                _user_attributes(extra) if extra else None,
                host,
                pid,
                service,
                "",
                origin,
            )
        )
    runs.extend(plain)
    try:  # decode every slow span before reporting anything, so a retry starts clean
        decoded = [(_DECODER.raw_decode(line, at)[0], resource) for at, resource in slow]
    except ValueError:
        raise _FullDecode from None
    for span, resource in decoded:
        run = span_to_run(
            span, resource, origin=origin, source=source, read_range=read_range, log=log
        )
        if run is not None:
            runs.append(run)
    log.outside_range += outside
    log.ignored_spans += spans - expected
    return runs


def _resources(line: str) -> list[tuple[int, tuple[str, int, str]]]:
    """``(position, (host, pid, service))`` of every resource in the line, in order."""
    out = []
    for m in _RESOURCE_RE.finditer(line):
        try:
            resource, _ = _DECODER.raw_decode(line, m.end() - 1)
        except ValueError:
            raise _FullDecode from None
        attributes = (
            decode_attributes(resource.get("attributes")) if isinstance(resource, dict) else {}
        )
        out.append((m.start(), resource_identity(attributes)))
    return out


def _user_attributes(extra: str) -> str | None:
    attributes = decode_attributes(json.loads(f"[{extra[1:]}]"))
    user = {
        k[len(USER_ATTRIBUTE_PREFIX) :]: v
        for k, v in attributes.items()
        if k.startswith(USER_ATTRIBUTE_PREFIX)
    }
    return json.dumps(user, ensure_ascii=False) if user else None


def decode_line(
    line: str | bytes,
    *,
    origin: str,
    source: str,
    read_range: ReadRange,
    log: ReadLog,
) -> list[TraceRun]:
    """The node spans of one OTLP-JSON line, decoded in full (the general, slower path)."""
    try:
        data = json.loads(line)
        pairs = list(iter_request_spans(data))
    except ValueError as exc:  # JSONDecodeError and envelope problems
        log.add_error(source, origin, f"not an OTLP-JSON request: {_short(exc)}")
        return []
    runs = []
    for resource, span in pairs:
        run = span_to_run(
            span, resource, origin=origin, source=source, read_range=read_range, log=log
        )
        if run is not None:
            runs.append(run)
    return runs


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:199] + "…"


# --- the source -------------------------------------------------------------------------------


class OtlpJsonFileSource(TraceSource):
    """Spans from OTLP-JSON lines files; see the module docstring."""

    scheme: ClassVar[str] = "otlp-json"

    def __init__(
        self, location: str | os.PathLike[str], files: Sequence[Path] | None = None
    ) -> None:
        self.location = os.fspath(location)
        self._files = None if files is None else list(files)

    def describe(self) -> str:
        return f"{self.scheme}:{self.location}"

    def split(self, parts: int, read_range: ReadRange, *, min_bytes: int = 0) -> list[TraceSource]:
        """The files in ``parts`` groups of about equal size (largest first into the
        lightest group), when there are at least two files and ``min_bytes`` of them."""
        sized = sorted(
            ((size, file) for file, size in self._todo(read_range, ReadLog())),
            key=lambda pair: (-pair[0], str(pair[1])),
        )
        if parts < 2 or len(sized) < 2 or sum(size for size, _ in sized) < min_bytes:
            return [self]
        groups: list[tuple[int, list[Path]]] = [(0, []) for _ in range(min(parts, len(sized)))]
        for size, file in sized:
            total, members = min(groups, key=lambda g: g[0])
            groups.remove((total, members))
            groups.append((total + size, [*members, file]))
        return [OtlpJsonFileSource(self.location, sorted(members)) for _, members in groups]

    def files(self) -> list[Path]:
        """The files PATH names, oldest name first; :class:`SourceError` if there are none."""
        if self._files is not None:
            return list(self._files)
        path = Path(self.location)
        if any(ch in self.location for ch in "*?["):
            found = [Path(p) for p in sorted(glob.glob(self.location, recursive=True))]
            files = [p for p in found if p.is_file()]
        elif path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not p.name.startswith(".")
                and (".json" in p.name or p.name.endswith(".gz"))
            )
        elif path.is_file():
            files = [path]
        else:
            raise SourceError(f"{self.describe()}: no such file or directory")
        if not files and not path.is_dir():
            raise SourceError(f"{self.describe()}: no files match")
        return files

    def _todo(self, read_range: ReadRange, log: ReadLog) -> list[tuple[Path, int]]:
        """The files to read, with their sizes: those modified since the range began."""
        earliest_s = read_range.start_ns / 1e9
        todo = []
        for file in self.files():
            try:
                stat = file.stat()
            except OSError as exc:
                log.add_error(self.describe(), str(file), f"cannot stat: {exc.strerror}")
                continue
            if stat.st_mtime < earliest_s:
                continue  # written before the range began: cannot hold a span of the range
            todo.append((file, stat.st_size))
        return todo

    def pipeline_runs(
        self, read_range: ReadRange, log: ReadLog
    ) -> Iterator[PipelineRunSide] | None:
        files = [file for file, _ in self._todo(read_range, log)]
        return otlp_pipeline_runs(files, read_range, log, self.describe())

    def read(self, read_range: ReadRange, log: ReadLog) -> Iterator[TraceRun]:
        todo = self._todo(read_range, log)
        total = sum(size for _, size in todo) or None
        done = 0
        for file, size in todo:
            yield from self._read_file(file, read_range, log, done, total)
            done += size
            log.tick("reading traces", done, total)

    def _read_file(
        self,
        file: Path,
        read_range: ReadRange,
        log: ReadLog,
        done: int,
        total: int | None,
    ) -> Iterator[TraceRun]:
        source = self.describe()

        def progress(position: int) -> None:
            log.tick("reading traces", done + position, total)

        for origin, raw_line in read_lines(file, source, log, progress=progress):
            try:
                line = raw_line.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                log.add_error(source, origin, f"not UTF-8: {exc.reason} at byte {exc.start}")
                continue
            yield from scan_line(line, origin=origin, source=source, read_range=read_range, log=log)


def read_lines(
    file: Path,
    source: str,
    log: ReadLog,
    *,
    max_bytes: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[str, bytes]]:
    """``(origin, line)`` of every non-blank line of ``file`` (``origin`` is ``file:number``).

    Gzip is read through (recognised by its magic bytes), zstd is refused. A line longer than
    ``max_bytes`` is skipped, read in pieces of that size so it is never held whole. Every
    problem — a file that cannot be opened, compressed data cut short, an overlong line — is
    reported into ``log`` with its file and line, never raised; what came before it is kept.
    ``progress(bytes read)`` is called every 64 lines.
    """
    try:
        raw = open(file, "rb")  # noqa: SIM115 - closed below, wrapped by gzip
    except OSError as exc:
        log.add_error(source, str(file), f"cannot open: {exc.strerror}")
        return
    number = 0
    limit = -1 if max_bytes is None else max_bytes + 1
    try:
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(_ZSTD_MAGIC):
            log.add_error(
                source,
                str(file),
                "zstd-compressed: not supported; decompress it "
                "(zstd -d) or configure the collector with compression: gzip",
            )
            return
        stream: IO[bytes] = raw
        if magic.startswith(_GZIP_MAGIC):
            stream = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
        for number, raw_line in enumerate(iter(lambda: stream.readline(limit), b""), start=1):
            if max_bytes is not None and len(raw_line) > max_bytes:
                skipped = len(raw_line) + _skip_line(stream, max_bytes)
                log.add_error(
                    source,
                    f"{file}:{number}",
                    f"line of {skipped:,} bytes, longer than {max_bytes:,}: skipped",
                )
                continue
            if raw_line.strip():
                yield f"{file}:{number}", raw_line
            if progress is not None and number % 64 == 0:
                progress(raw.tell())
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        reason = _short(exc) or type(exc).__name__
        log.add_error(
            source,
            f"{file}:{number + 1}",
            f"compressed data ends or breaks here ({reason}); the {number} lines "
            "before it were read",
        )
    finally:
        raw.close()


def _skip_line(stream: IO[bytes], piece: int) -> int:
    """Read to the end of the current line in pieces of ``piece`` bytes; the bytes skipped."""
    skipped = 0
    while True:
        chunk = stream.readline(piece)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped


__all__ = ["OtlpJsonFileSource", "decode_line", "read_lines", "scan_line"]
