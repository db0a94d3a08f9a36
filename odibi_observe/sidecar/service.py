"""The sidecar process: spool → sinks, the sweeper, the span ledger, one HTTP port.

Pipeline processes in ``mode="sidecar"`` only append their run events to a spool directory
(:mod:`odibi_observe.spool`). A :class:`Sidecar` — one per host or pod — does the rest:

* **pump** — a :class:`~odibi_observe._pump.SpoolPump` delivers every spooled event to the
  same sinks an in-process observer would have (catalog, OpenTelemetry, Prometheus), built by
  :class:`~odibi_observe._runtime.Observer` from the same settings and environment variables,
  so a run recorded through the sidecar is identical to one recorded in-process;
* **sweeper** — every ``sweep_interval``, closes as ``CRASHED`` the ``RUNNING`` runs whose
  process is gone (:class:`~odibi_observe.sidecar.sweeper.Sweeper`); its crash events go
  through the spool, so they reach every sink with the pump's retries. A sweep waits until the
  catalog has every event the dead processes spooled (not until the spool is empty, which a
  busy host never is): a terminal event still spooled must not be mistaken for a crash;
* **maintenance** — ``spool.gc()`` every ``gc_interval`` (segments every cursor has passed are
  deleted) and the spool gauges every second;
* **HTTP** — :class:`~odibi_observe.sidecar.server.SidecarServer`: ``/metrics`` (node metrics
  and the sidecar's own), ``/healthz``, and the OTLP receiver into the span ledger.

Liveness: each loop records when it last completed, and each sink export when it started;
``/healthz`` answers 503 when a loop has not completed within its interval plus
``stuck_after``, or an export has been running longer than ``stuck_after`` — the situations a
restart fixes. A sink that fails fast (database down) is *not* stuck: it is reported as
``failing`` with its backlog, and a restart would not help.

Shutdown (:meth:`Sidecar.stop`, SIGTERM/SIGINT in :meth:`Sidecar.run_forever`): stop
accepting HTTP and wait for exports in flight, stop the loops, let the pump drain what the
healthy sinks can take within ``drain_timeout``, then stop the pump and shut the sinks down.
What is not drained stays in the spool for the next start.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, cast

from prometheus_client import CollectorRegistry, Counter, Gauge

from odibi_observe._redact import error_text
from odibi_observe._selfmetrics import SelfMonitor, log
from odibi_observe.config import ConfigurationError, Settings, hide_password, resolve_settings
from odibi_observe.conventions import SIDECAR_METRICS, RunStatus, Source
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sidecar.ledger import SpanLedger
from odibi_observe.sidecar.options import SidecarOptions
from odibi_observe.sidecar.receiver import TraceReceiver
from odibi_observe.sidecar.server import SidecarServer
from odibi_observe.sinks.base import RecordRejected, Sink
from odibi_observe.sinks.catalog import CatalogSink
from odibi_observe.sinks.spool import takes_spans

if TYPE_CHECKING:
    from odibi_observe._deadletter import DeadLetter
    from odibi_observe._pump import SpoolPump
    from odibi_observe._runtime import Observer
    from odibi_observe.catalog.store import CatalogStore
    from odibi_observe.sidecar.sweeper import Sweeper, SweepResult
    from odibi_observe.spool import FsyncPolicy, Spool

__all__ = ["Sidecar", "SidecarOptions"]

#: How often the maintenance loop runs (and ``odibi_observe_sidecar_last_loop_...`` moves).
TICK_SECONDS: Final = 1.0
#: How often it re-counts each sink's backlog (in events) for ``/healthz``. Counting parses
#: the unacknowledged frames; at 1 s it took a measurable share of the pump's CPU while a
#: large backlog drained — exactly when throughput matters. The spool's size, segments and
#: counters are a directory listing and are re-read every tick.
BACKLOG_SECONDS: Final = 5.0


@dataclass
class _Loop:
    """A background loop's liveness: when it last completed, and how often it should."""

    name: str
    interval: float
    last: float
    runs: int = 0
    last_error: str | None = None
    thread: threading.Thread | None = field(default=None, repr=False)


class _WatchedSink(Sink):
    """A sink as the pump and the sweeper see it, with the timing ``/healthz`` reports.

    ``exporting_since`` is set while an export runs: an export running far longer than any
    timeout in the sink should allow (a database call that never returns) is the one stuck
    state the sidecar can only leave by restarting.
    """

    def __init__(self, sink: Sink, clock: Callable[[], float]) -> None:
        self.inner = sink
        self.name = sink.name
        self.kinds = sink.kinds
        self.coalesces_starts = sink.coalesces_starts
        self._clock = clock
        self._catalog = sink.name == CATALOG_SINK
        self.exporting_since: float | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None

    def export(self, events: Sequence[RunEvent]) -> None:
        if self._catalog:
            events = without_sweeper_echo(events)
        with self._timed():
            self.inner.export(events)

    @property
    def takes_spans(self) -> bool:
        """Whether the wrapped sink takes application spans (see ``sinks/spool.py``)."""
        return takes_spans(self.inner)

    def export_spans(self, spans: Sequence[Any]) -> None:
        """Deliver spooled application spans to the wrapped sink, timed like ``export``."""
        with self._timed():
            self.inner.export_spans(spans)  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        """What ``/healthz`` reports of one export: since when it runs, how it ended."""
        self.exporting_since = self._clock()
        try:
            yield
        except RecordRejected:
            self._succeeded()  # the rest was exported: not a sink failure
            raise
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {error_text(exc, 300)}"
            raise
        finally:
            self.exporting_since = None
        self._succeeded()

    def _succeeded(self) -> None:
        self.last_success = self._clock()
        self.last_error = None

    def force_flush(self, timeout: float | None = None) -> bool:
        return self.inner.force_flush(timeout)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def after_fork(self) -> None:
        self.inner.after_fork()


#: The name of the catalog sink (and so of its spool cursor).
CATALOG_SINK: Final = CatalogSink.name


def without_sweeper_echo(events: Sequence[RunEvent]) -> Sequence[RunEvent]:
    """``events`` without the sweeper's own crash events, for the catalog.

    The sweeper closes a run in the catalog itself (only where it is still RUNNING) and then
    spools the CRASHED event for the *other* sinks. Delivering it to the catalog again would
    be redundant — and wrong in one race: a run whose real ending was spooled (by another
    writer) just as the sweep looked would get that ending, then the echo, in whatever order
    the pump reads the two writers; the later one wins the upsert.
    """
    if not any(e.record.source is Source.SIDECAR for e in events):
        return events
    return [
        e
        for e in events
        if not (e.record.source is Source.SIDECAR and e.record.status is RunStatus.CRASHED)
    ]


class Sidecar:
    """One sidecar: build with options, then :meth:`start`/:meth:`stop` or :meth:`run_forever`.

    Everything that can be wrong with the input — an unparseable catalog URL, an unwritable
    spool directory, a port in use, an invalid ``ODIBI_OBSERVE_*``/``OTEL_*`` variable — raises
    :class:`~odibi_observe.config.ConfigurationError` from the constructor (password hidden),
    before any thread starts. A database that is merely *down* is not an error: the pump
    retries, the receiver answers 503, and ``/healthz`` shows the failing sink.

    ``settings`` replaces the environment-derived settings (tests); ``sinks`` replaces the
    sinks the observer would build (tests, or embedding with custom sinks).
    """

    def __init__(
        self,
        options: SidecarOptions,
        *,
        settings: Settings | None = None,
        sinks: Sequence[Sink] | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._stopping = threading.Event()
        self._started = False
        self._stopped = False
        self.settings = _sidecar_settings(options, settings)
        self.spool = _open_spool(options, self.registry)
        resources: list[Callable[[], Any]] = [self.spool.close]
        try:
            self.observer = _build_observer(self.settings, self.registry, sinks)
            resources.append(lambda: self.observer.shutdown(5.0))
            self.monitor: SelfMonitor = self.observer.monitor
            self.store = _catalog_store(self.observer, options.catalog_url)
            ingested = Counter(
                SIDECAR_METRICS.ingested.prometheus_base,
                SIDECAR_METRICS.ingested.description,
                SIDECAR_METRICS.ingested.labels,
                registry=self.registry,
            )
            counting = _counting_sink(self.observer.sinks)
            self.sinks = tuple(_WatchedSink(s, clock) for s in self.observer.sinks)
            self.ledger: SpanLedger | None = None
            self.receiver: TraceReceiver | None = None
            if options.ledger:
                self.ledger = SpanLedger(self.store.engine)
                self.receiver = TraceReceiver(
                    self.ledger,
                    registry=self.registry,
                    monitor=self.monitor,
                    token=options.token,
                    max_body_bytes=options.max_body_bytes,
                )
            #: Records no sink retry can deliver: <spool dir>/dead-letter/ (the bus's, shared).
            self.dead_letter = self.observer.bus.dead_letter
            self.pump = _build_pump(
                self.spool,
                self.sinks,
                self.monitor,
                options,
                _ingest_counter(ingested, counting),
                dead_letter=self.dead_letter,
            )
            self._catchup_wait = min(options.sweep_interval, 30.0)
            self.sweeper = (
                _build_sweeper(
                    self.store,
                    self.sinks,
                    options,
                    spool=self.spool,
                    host=self.settings.host,
                    registry=self.registry,
                    settle=self._catalog_caught_up,
                )
                if options.sweep_interval
                else None
            )
            self._gauges()
            self.server = _bind(options, self.registry, self.receiver, self.health)
        except BaseException:
            for release in reversed(resources):
                try:
                    release()
                except Exception as exc:  # pragma: no cover - best effort on a failed start
                    log.debug("odibi-observe sidecar: cleanup after a failed start: %s", exc)
            raise
        now = clock()
        self._loops = {"maintenance": _Loop("maintenance", TICK_SECONDS, now)}
        if self.sweeper is not None:
            self._loops["sweeper"] = _Loop("sweeper", options.sweep_interval, now)
        self._last_gc = now
        self.last_sweep: SweepResult | None = None

    # -- metrics -------------------------------------------------------------------------

    def _gauges(self) -> None:
        # The spool exports odibi_observe_spool_bytes and ..._spool_backlog_events{sink}
        # itself, computed at scrape time from the directory (other processes write it).
        m = SIDECAR_METRICS.last_loop
        self._last_loop = Gauge(m.prometheus, m.description, m.labels, registry=self.registry)
        self._spool_snapshot: dict[str, Any] = {}
        self._backlog: dict[str, int] = {}
        self._last_backlog = -float("inf")
        self._refresh_snapshot()

    def _refresh_snapshot(self) -> None:
        """The spool's size and counters, and each cursor's backlog, for ``/healthz``.

        Read by the maintenance loop — sizes every tick, the backlog every
        :data:`BACKLOG_SECONDS` — not per request, so a liveness probe never waits on a
        directory scan. ``/healthz`` says how old each number is.
        """
        now = self._clock()
        stats = self.spool.stats()
        snapshot = {
            "bytes": stats.bytes,
            "segments": stats.segments,
            "corrupt_frames": stats.corrupt_frames,
            "rejected": stats.rejected,
            # What the spool lost (damaged frames, deleted segments, the runs whose
            # end may be among them): see SpoolDamage.
            "damage": self.spool.damage().as_dict(),
        }
        if now - self._last_backlog >= BACKLOG_SECONDS:
            self._backlog = self.pump.backlog()
            self._last_backlog = now
        self._spool_snapshot = {**snapshot, "backlog": self._backlog}
        self._last_snapshot = now

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where the HTTP endpoints are, e.g. ``http://127.0.0.1:9464``."""
        return self.server.url

    def start(self) -> Sidecar:
        """Serve HTTP, start the pump and the loops; returns at once."""
        if self._started:
            return self
        self._started = True
        self.server.start()
        self.pump.start()
        targets: dict[str, Callable[[], None]] = {
            "maintenance": self._maintenance,
            "sweeper": self._sweep_loop,
        }
        for loop in self._loops.values():
            loop.last = self._clock()
            loop.thread = threading.Thread(
                target=self._run_loop,
                args=(loop, targets[loop.name]),
                name=f"odibi-observe-sidecar-{loop.name}",
                daemon=True,
            )
            loop.thread.start()
        log.info(
            "odibi-observe sidecar serving on %s (spool %s, catalog %s)",
            self.url,
            self.options.spool_dir,
            hide_password(self.options.catalog_url),
        )
        if (
            self.receiver is not None
            and not self.receiver.requires_token
            and not _loopback(self.options.listen_host)
        ):
            log.warning(
                "odibi-observe sidecar: POST /v1/traces on %s takes spans from anyone "
                "who can reach it: set --token-file (or ODIBI_OBSERVE_SIDECAR_TOKEN)",
                self.url,
            )
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Stop gracefully (see the module docstring); True if every healthy sink drained.

        ``timeout`` bounds the drain (default ``drain_timeout``). Idempotent.
        """
        if self._stopped:
            return True
        self._stopped = True
        self._stopping.set()
        drain = self.options.drain_timeout if timeout is None else timeout
        self.server.stop(timeout=5.0)
        for loop in self._loops.values():
            if loop.thread is not None:
                loop.thread.join(5.0)
        drained = self._drain(drain) if self._started else True
        self.pump.stop(timeout=5.0)
        try:
            self.observer.shutdown(timeout=5.0)
        except Exception as exc:  # pragma: no cover - sinks log their own shutdown errors
            log.warning("odibi-observe sidecar: shutting the sinks down failed: %s", exc)
        if self.ledger is not None:
            self.ledger.dispose()
        left = {k: v for k, v in self.pump.backlog().items() if v} if not drained else {}
        self.spool.close()
        if left:
            log.warning(
                "odibi-observe sidecar: stopped with events still spooled %s; they "
                "are delivered at the next start",
                left,
            )
        return drained

    def _drain(self, timeout: float) -> bool:
        """Wait until the sinks that are not failing have taken every spooled event.

        A failing sink is not waited for: its backoff can outlast any grace period, and its
        events stay spooled for the next start.
        """
        deadline = time.monotonic() + timeout
        while True:
            failing = self.pump.failing()
            pending = {k: v for k, v in self.pump.backlog().items() if v and not failing.get(k)}
            if not pending:
                return not any(self.pump.backlog().values())
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)  # counting the backlog parses frames: not in a tight loop

    def run_forever(self, on_ready: Callable[[Sidecar], None] | None = None) -> int:
        """Run until SIGTERM or SIGINT, then stop gracefully; the process exit status.

        Must be called from the main thread (signal handlers). ``on_ready`` runs once
        serving (the CLI prints the address there). A second signal during the shutdown
        exits at once with status 1.
        """
        received: list[int] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if received:
                os._exit(1)  # asked twice: the operator does not want to wait for the drain
            received.append(signum)
            self._stopping.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            if on_ready is not None:
                on_ready(self)
            while not self._stopping.wait(1.0):
                pass
            if received:
                log.info(
                    "odibi-observe sidecar: %s received, stopping", signal.Signals(received[0]).name
                )
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    # -- loops ---------------------------------------------------------------------------

    def _run_loop(self, loop: _Loop, body: Callable[[], None]) -> None:
        # The sweeper's first pass waits one interval: right after a start the pump has not
        # caught up yet, and the pass would only be postponed.
        if loop.name == "sweeper" and self._stopping.wait(loop.interval):
            return
        while not self._stopping.is_set():
            try:
                body()
                loop.last_error = None
            except Exception as exc:  # a loop must survive any one failure
                loop.last_error = f"{type(exc).__name__}: {error_text(exc, 300)}"
                self.monitor.warn_once_per_minute(
                    f"sidecar-loop:{loop.name}",
                    "odibi-observe sidecar %s failed: %s",
                    loop.name,
                    loop.last_error,
                )
            loop.last = self._clock()
            loop.runs += 1
            if loop.name == "maintenance":
                self._last_loop.set(time.time())
            self._stopping.wait(loop.interval)

    def _maintenance(self) -> None:
        self._refresh_snapshot()
        if self.options.gc_interval and self._clock() - self._last_gc >= self.options.gc_interval:
            self._last_gc = self._clock()
            freed = self.spool.gc()
            if freed:
                log.debug("odibi-observe sidecar: spool gc freed %d bytes", freed)

    def _sweep_loop(self) -> None:
        self.sweep_once()

    def sweep_once(self, catchup_timeout: float | None = None) -> SweepResult | None:
        """One sweep; the ``SweepResult`` (None when the sweeper is off).

        Runs judged dead are closed only once the catalog has every event their processes
        spooled (the sweeper's ``settle`` hook, :meth:`_catalog_caught_up`): a run whose
        terminal event is spooled but not yet written is still RUNNING in the catalog, and its
        process is gone — exactly what a crash looks like. The wait comes *after* the
        verdicts, because a process can spool its ending and exit between a check made before
        them and the verdict; once it is judged dead it can write nothing more, so what the
        catalog has then is final. If the catalog does not catch up in time, the closing is
        postponed.
        """
        if self.sweeper is None:
            return None
        self._catchup_wait = (
            min(self.options.sweep_interval, 30.0) if catchup_timeout is None else catchup_timeout
        )
        self.store.ensure_schema()
        result = self.sweeper.sweep()
        self.last_sweep = result
        return result

    def _catalog_caught_up(self, records: Sequence[RunRecord]) -> bool:
        """Has the catalog every event the writers of ``records`` (the runs about to be
        closed) spooled? Waits up to the catch-up time. Other writers are not waited for: a
        steady stream from live pipelines must not hold a crashed run open."""
        from odibi_observe.sidecar.sweeper import spooled_so_far_ingested

        caught_up = spooled_so_far_ingested(self.spool, CATALOG_SINK, records)
        deadline = time.monotonic() + self._catchup_wait
        while not caught_up():
            if time.monotonic() >= deadline or self._stopping.is_set():
                self.monitor.warn_once_per_minute(
                    "sidecar-sweep-behind",
                    "odibi-observe sidecar: closing crashed runs "
                    "postponed, the catalog has not caught up with what the dead processes "
                    "spooled yet",
                )
                return False
            time.sleep(0.25)  # counting the backlog parses frames: not in a tight loop
        return True

    # -- health --------------------------------------------------------------------------

    def health(self) -> tuple[bool, Mapping[str, Any]]:
        """``/healthz``: healthy unless a loop or an export is stuck (see module docstring)."""
        now = self._clock()
        stuck: list[str] = []
        loops = {}
        for loop in self._loops.values():
            age = now - loop.last
            alive = loop.thread is None or loop.thread.is_alive() or self._stopping.is_set()
            if age > loop.interval + self.options.stuck_after or not alive:
                stuck.append(loop.name)
            loops[loop.name] = {
                "last_completed_seconds_ago": round(age, 3),
                "interval_seconds": loop.interval,
                "runs": loop.runs,
                "last_error": loop.last_error,
            }
        failing = self.pump.failing()
        delivered = self.pump.delivered()
        backlog = self._spool_snapshot.get("backlog", {})
        sinks = {}
        for sink in self.sinks:
            exporting = None if sink.exporting_since is None else now - sink.exporting_since
            if exporting is not None and exporting > self.options.stuck_after:
                stuck.append(f"sink:{sink.name}")
            sinks[sink.name] = {
                "backlog": backlog.get(sink.name, 0),
                "failing": failing.get(sink.name, False),
                "delivered": delivered.get(sink.name, 0),
                "exporting_for_seconds": None if exporting is None else round(exporting, 3),
                "last_error": sink.last_error,
            }
        status = "stuck" if stuck else ("degraded" if any(failing.values()) else "ok")
        document = {
            "status": status,
            "stuck": stuck,
            "loops": loops,
            "last_loop_age_seconds": round(now - self._loops["maintenance"].last, 3),
            "spool": {
                **self._spool_snapshot,
                "directory": self.options.spool_dir,
                "read_seconds_ago": round(now - self._last_snapshot, 3),
                "backlog_read_seconds_ago": round(now - self._last_backlog, 3),
            },
            "sinks": sinks,
            # Counted, not a health problem: the sinks went on past these records.
            "dead_letter": self.dead_letter.health(),
        }
        return not stuck, document


# -- construction helpers ----------------------------------------------------------------------


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _sidecar_settings(options: SidecarOptions, settings: Settings | None) -> Settings:
    """The settings the sinks are built from: the environment's, with the sidecar's own.

    ``mode`` is forced to ``background``: the pipelines' ``mode=sidecar`` (often set in an
    environment shared with this container) would make the sidecar spool to itself. The
    Prometheus port and text file are dropped: the sidecar serves ``/metrics`` itself.
    """
    if settings is None:
        settings = resolve_settings(
            {
                "catalog_url": options.catalog_url,
                "mode": "background",
                "spool_dir": options.spool_dir,
            }
        )
    return replace(
        settings,
        catalog_url=options.catalog_url,
        mode="background",
        prometheus_port=None,
        prometheus_textfile=None,
        spool_dir=options.spool_dir,
    )


def _open_spool(options: SidecarOptions, registry: CollectorRegistry) -> Spool:
    from odibi_observe.spool import Spool

    directory = Path(options.spool_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Checked by writing, not with os.access: that ignores read-only mounts and ACLs.
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
        return Spool(
            directory,
            fsync=cast("FsyncPolicy", options.fsync),
            max_bytes=options.spool_max_bytes,
            registry=registry,
        )
    except OSError as exc:
        raise ConfigurationError(
            f"spool directory {os.fspath(directory)!r} is not usable: {exc.strerror or exc}"
        ) from None


def _build_observer(
    settings: Settings, registry: CollectorRegistry, sinks: Sequence[Sink] | None
) -> Observer:
    from odibi_observe._runtime import Observer

    return Observer(settings, sinks=sinks, registry=registry, strict=True)


def _catalog_store(observer: Observer, catalog_url: str) -> CatalogStore:
    """The catalog sink's store (its engine is shared with the ledger), or a new one."""
    from odibi_observe.catalog.store import CatalogStore
    from odibi_observe.sinks.catalog import CatalogSink

    for sink in observer.sinks:
        if isinstance(sink, CatalogSink):
            return sink.store
    return CatalogStore(catalog_url)


def _counting_sink(sinks: Sequence[Sink]) -> Sink | None:
    """The sink whose successful exports count ingested events: the first that takes every
    kind (the catalog), so that each spooled event is counted once."""
    every = frozenset(EventKind)
    return next((s for s in sinks if s.kinds >= every), None)


def _ingest_counter(
    ingested: Counter,
    counting: Sink | None,
) -> Callable[[str, dict[EventKind | None, int]], None]:
    """Count acknowledged frames by kind on one sink's cursor, so each spooled event counts
    once (frames the sink did not need decoded — a start superseded by its end — included)."""
    name = None if counting is None else counting.name

    def on_commit(sink: str, kinds: dict[EventKind | None, int]) -> None:
        if sink == name:
            for kind, n in kinds.items():
                ingested.labels(kind="unknown" if kind is None else kind.value).inc(n)

    return on_commit


def _build_pump(
    spool: Spool,
    sinks: Sequence[Sink],
    monitor: SelfMonitor,
    options: SidecarOptions,
    on_commit: Callable[[str, dict[EventKind | None, int]], None],
    *,
    dead_letter: DeadLetter,
) -> SpoolPump:
    from odibi_observe._pump import SpoolPump

    return SpoolPump(
        spool,
        sinks,
        monitor=monitor,
        max_batch=options.max_batch,
        poll_interval=options.poll_interval,
        on_commit=on_commit,
        dead_letter=dead_letter,
    )


def _build_sweeper(
    store: CatalogStore,
    sinks: Sequence[Sink],
    options: SidecarOptions,
    *,
    spool: Spool,
    host: str,
    registry: CollectorRegistry,
    settle: Callable[[Sequence[RunRecord]], bool],
) -> Sweeper:
    from odibi_observe.sidecar.sweeper import Sweeper

    # host: the name pipelines record (Settings.host), so "this host's runs" match.
    return Sweeper(
        store,
        sinks,
        host=host,
        heartbeat_timeout=options.heartbeat_timeout,
        all_hosts=options.all_hosts,
        pid_check=options.pid_check,
        spool=spool,
        registry=registry,
        settle=settle,
    )


def _bind(
    options: SidecarOptions,
    registry: CollectorRegistry,
    receiver: TraceReceiver | None,
    health: Callable[[], tuple[bool, Mapping[str, Any]]],
) -> SidecarServer:
    try:
        return SidecarServer(
            options.listen_host,
            options.listen_port,
            registry=registry,
            receiver=receiver,
            health=health,
        )
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen on {options.listen_host}:{options.listen_port}: {exc.strerror or exc}"
        ) from None
