"""The process-wide observer: settings, sinks, bus, and the exit hooks.

:func:`configure` builds an :class:`Observer` from :class:`~odibi_observe.config.Settings` and
makes it current. Node runs started before any ``configure()`` call configure from the
environment on first use, so a pipeline deployed with ``ODIBI_OBSERVE_*`` / ``OTEL_*``
variables needs no code change beyond the decorator.

Default sinks, from the settings (in ``mode="sidecar"`` the only sink is the spool in
``spool_dir``; the sidecar process delivers to the others):

* Prometheus — always (an in-process registry; served when ``prometheus_port`` is set, written
  to ``prometheus_textfile`` on flush when that is set);
* catalog — when ``catalog_url`` is set;
* OpenTelemetry — when ``otlp_endpoint`` or ``traces_file`` is set, or the application has
  already installed an SDK ``TracerProvider`` (its spans then carry ours).

Exit paths the interpreter can see are handled here: ``atexit`` and SIGTERM close every run
still in progress as ``CRASHED`` and deliver what they can within ``exit_timeout`` (one deadline
for all sinks); what is left is spilled to a spool directory (:mod:`odibi_observe._spill`) for a
sidecar or ``odibi-observe sweep --spool-dir`` to deliver. (SIGKILL and the OOM killer cannot
be seen from inside; the durable ``RUNNING`` row is what a sweeper closes later.)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import replace
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, RestrictedRegistry

from odibi_observe._active import crash_active_runs
from odibi_observe._bus import EventBus, Keeper
from odibi_observe._deadletter import DeadLetter
from odibi_observe._heartbeat import Heartbeat
from odibi_observe._selfmetrics import SelfMonitor, log
from odibi_observe._spill import SpoolKeeper, default_spill_dir
from odibi_observe.config import ConfigurationError, Resolution, Settings, resolve, setting
from odibi_observe.conventions import CRASH_PROCESS_EXIT, CRASH_SIGTERM
from odibi_observe.sinks.base import Sink, SinkContext, build_sink
from odibi_observe.sinks.builtin import SPOOL_SINK
from odibi_observe.sinks.prometheus import MetricsServer, PrometheusSink


class Observer:
    """Everything one configuration owns: settings, registry, sinks and the bus."""

    def __init__(
        self,
        settings: Settings,
        *,
        sinks: Sequence[Sink] | None = None,
        extra_sinks: Sequence[Sink] = (),
        registry: CollectorRegistry | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        strict: bool = False,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.monitor = SelfMonitor(self.registry)
        self.prometheus_sink: PrometheusSink | None = None
        if sinks is None:
            sinks = self._default_sinks(tracer_provider, meter_provider, strict)
        self.sinks: tuple[Sink, ...] = (*sinks, *extra_sinks)
        # Sidecar mode appends to the spool on the caller's thread: the event is on disk when
        # the decorator moves on, which is the whole point of the mode.
        bus_mode = "inline" if self.settings.mode == "sidecar" else self.settings.mode
        self.bus = EventBus(
            self.sinks,
            mode=bus_mode,
            monitor=self.monitor,
            max_queue=settings.max_queue,
            max_batch=settings.max_batch,
            flush_interval=settings.flush_interval,
            dead_letter=DeadLetter.in_spool_dir(self.monitor, settings.spool_dir),
        )
        self.metrics_server: MetricsServer | None = None
        if settings.prometheus_port is not None:
            try:
                self.metrics_server = MetricsServer(
                    self.registry, settings.prometheus_port, settings.prometheus_host
                )
            except OSError as exc:
                log.error(
                    "odibi-observe: cannot serve /metrics on %s:%s: %s",
                    settings.prometheus_host,
                    settings.prometheus_port,
                    exc,
                )

    def _default_sinks(self, tracer_provider: Any, meter_provider: Any, strict: bool) -> list[Sink]:
        """Every registered sink the settings ask for (:mod:`odibi_observe.extensions`):
        the spool alone in sidecar mode, otherwise every sink scheme but the spool."""
        from odibi_observe import extensions

        def context() -> SinkContext:
            return SinkContext(
                self.settings, self.registry, self.monitor, tracer_provider, meter_provider
            )

        if self.settings.mode == "sidecar":
            try:
                sink = build_sink(SPOOL_SINK, context())
                if sink is not None:
                    return [sink]
                raise ConfigurationError("the spool sink factory built nothing")
            except (OSError, ConfigurationError, extensions.ExtensionError) as exc:
                if strict:
                    raise ConfigurationError(
                        f"cannot open the spool in {self.settings.spool_dir}: {exc}"
                    ) from exc
                # Without a spool the sidecar sees nothing; recording in-process is the next
                # best thing, and the error says what to fix.
                log.error(
                    "odibi-observe: cannot open the spool in %s (%s); recording "
                    "in-process (mode=background) instead",
                    self.settings.spool_dir,
                    exc,
                )
                self.settings = replace(self.settings, mode="background")
        sinks: list[Sink] = []
        for scheme in extensions.schemes(extensions.SINKS):
            if scheme == SPOOL_SINK:  # the transport of sidecar mode, not a backend
                continue
            try:
                sink = build_sink(scheme, context())
            except ConfigurationError as exc:
                # A sink that cannot be built (a missing optional driver, say) is left out
                # with a clear error; the other sinks still record every run.
                if strict:
                    raise
                log.error("odibi-observe: %s sink disabled: %s", scheme, exc)
                continue
            except Exception as exc:  # another package's factory must not stop the pipeline
                if strict:
                    raise ConfigurationError(f"{scheme} sink: {exc}") from exc
                why = (
                    exc
                    if isinstance(exc, extensions.ExtensionError)
                    else f"{type(exc).__name__}: {exc}"
                )
                log.error("odibi-observe: %s sink disabled: %s", scheme, why)
                continue
            if sink is not None:
                sinks.append(sink)
        self.prometheus_sink = next(
            (sink for sink in sinks if isinstance(sink, PrometheusSink)), None
        )
        return sinks

    def flush(self, timeout: float | None = 30.0) -> bool:
        ok = self.bus.flush(timeout)
        self._write_textfile()
        return ok

    @property
    def prometheus_port(self) -> int | None:
        """The port ``/metrics`` is served on, if it is."""
        return None if self.metrics_server is None else self.metrics_server.port

    def shutdown(self, timeout: float | None = 30.0, *, keeper: Keeper | None = None) -> bool:
        """Flush and release everything within ``timeout``; what is left goes to ``keeper``
        (see :meth:`EventBus.shutdown`), or is dropped and counted without one."""
        ok = self.bus.shutdown(timeout, keeper=keeper)
        self._write_textfile()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        return ok

    def _write_textfile(self) -> None:
        path = self.settings.prometheus_textfile
        if not path:
            return
        from prometheus_client import write_to_textfile

        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            write_to_textfile(path, self.registry)
        except OSError as exc:
            log.error("odibi-observe: cannot write Prometheus text to %s: %s", path, exc)


_lock = threading.RLock()
_observer: Observer | None = None


def configure(
    *,
    project: str | None = None,
    environment: str | None = None,
    service_name: str | None = None,
    catalog_url: str | None = None,
    otlp_endpoint: str | None = None,
    otlp_protocol: str | None = None,
    traces_file: str | None = None,
    prometheus_port: int | None = None,
    mode: str | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    sinks: Sequence[Sink] | None = None,
    extra_sinks: Sequence[Sink] = (),
    registry: CollectorRegistry | None = None,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    strict: bool = False,
    **settings: Any,
) -> Observer:
    """Configure odibi-observe for this process and return the new :class:`Observer`.

    Every keyword is optional; unset ones come from ``ODIBI_OBSERVE_*`` and ``OTEL_*``
    environment variables, then defaults (precedence in :mod:`odibi_observe.config`). Further
    settings (``prometheus_textfile``, ``max_label_series``, ...) are accepted as keywords.

    ``mode`` is ``"background"`` (worker threads deliver), ``"inline"`` (sinks are called
    before the node returns) or ``"sidecar"`` (each event is appended to the spool in
    ``spool_dir`` and ``odibi-observe sidecar`` delivers it; durable against SIGKILL).

    ``spool_dir`` without ``mode`` means ``mode="sidecar"`` (logged once).

    ``sinks`` replaces the default sinks (tests pass an in-memory sink); ``extra_sinks`` adds
    to them. ``registry`` is the Prometheus registry the metrics are registered in (default: a
    private one); pass ``prometheus_client.REGISTRY`` to expose them on an application's own
    ``/metrics`` — a later ``configure()`` with the same registry replaces this observer's
    series there instead of clashing with them. A previous observer is flushed and shut down.

    An invalid setting is set aside alone, with one warning naming the variable or keyword,
    its value and what is expected; every other setting is kept — observability
    configuration never stops a pipeline — unless ``strict=True``, which raises
    :class:`~odibi_observe.config.ConfigurationError`. One warning also says when nothing
    durable records the runs, and when ``catalog_url``/``traces_file`` are given in sidecar
    mode (the sidecar writes those, not this process).
    """
    overrides = dict(
        project=project,
        environment=environment,
        service_name=service_name,
        catalog_url=catalog_url,
        otlp_endpoint=otlp_endpoint,
        otlp_protocol=otlp_protocol,
        traces_file=traces_file,
        prometheus_port=prometheus_port,
        mode=mode,
        spool_dir=None if spool_dir is None else os.fspath(spool_dir),
        **settings,
    )
    resolution = resolve(overrides)
    if strict and resolution.problems:
        raise ConfigurationError(resolution.problems[0].message)
    for message in (*resolution.problems, *resolution.notes):
        log.warning("odibi-observe: %s", message)
    resolved = resolution.settings
    with _lock:
        observer = _build_observer(
            resolved,
            sinks=sinks,
            extra_sinks=extra_sinks,
            registry=registry,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            strict=strict,
        )
    _warn_sidecar_writes(observer, resolution)
    if sinks is None and not extra_sinks and registry is None:
        _warn_if_nowhere(observer)
    global _observer
    with _lock:
        previous, _observer = _observer, observer
        _run_heartbeat(observer.settings.heartbeat_interval)
    if previous is not None:
        previous.shutdown(timeout=10.0)
    _install_exit_hooks(resolved)
    return observer


# -- configure() helpers ------------------------------------------------------------------


class _RegistryView(CollectorRegistry):
    """An application's registry, as one observer sees it: it remembers what it registered.

    Collectors registered through the view land in ``target`` (so the application's own
    ``/metrics`` serves them); collecting the view collects the whole target. :meth:`release`
    takes this observer's collectors out again, so the next observer on the same registry
    can register the same metric names instead of failing with ``DuplicateTimeseries``.
    """

    def __init__(self, target: CollectorRegistry) -> None:
        super().__init__()
        self.target = target
        self.mine: list[Collector] = []

    def register(self, collector: Collector) -> None:
        self.target.register(collector)
        self.mine.append(collector)

    def unregister(self, collector: Collector) -> None:
        self.target.unregister(collector)
        if collector in self.mine:
            self.mine.remove(collector)

    def collect(self) -> Iterable[Metric]:
        return self.target.collect()

    def restricted_registry(self, names: Iterable[str]) -> RestrictedRegistry:
        return self.target.restricted_registry(names)

    def get_target_info(self) -> dict[str, str] | None:
        return self.target.get_target_info()

    def release(self) -> None:
        for collector in self.mine:
            with contextlib.suppress(KeyError):  # the application unregistered it already
                self.target.unregister(collector)

    def restore(self) -> None:
        for collector in self.mine:
            with contextlib.suppress(ValueError):  # registered again meanwhile
                self.target.register(collector)


#: The view each application registry was last given to, released by the next configure().
_views: weakref.WeakKeyDictionary[CollectorRegistry, _RegistryView] = weakref.WeakKeyDictionary()


def _build_observer(
    settings: Settings, *, registry: CollectorRegistry | None, **kwargs: Any
) -> Observer:
    """An :class:`Observer`, its metrics in ``registry`` through a releasable view."""
    if registry is None:
        return Observer(settings, **kwargs)
    previous = _views.pop(registry, None)
    if previous is not None:
        previous.release()
    view = _RegistryView(registry)
    try:
        observer = Observer(settings, registry=view, **kwargs)
    except BaseException:
        view.release()
        if previous is not None:
            previous.restore()
            _views[registry] = previous
        raise
    _views[registry] = view
    return observer


def _warn_sidecar_writes(observer: Observer, resolution: Resolution) -> None:
    """In sidecar mode, say once that destinations given to this process are the sidecar's.

    Only for values given as ``configure()`` keywords: the same variables in an environment
    shared with the sidecar container are the documented way to configure the sidecar.
    """
    if observer.settings.mode != "sidecar":
        return
    given = [
        name
        for name in ("catalog_url", "traces_file", "otlp_endpoint")
        if resolution.sources.get(name) == "keyword"
    ]
    if given:
        log.warning(
            "odibi-observe: mode='sidecar': %s %s written by the sidecar (odibi-observe "
            "sidecar, from its own settings), not by this process, which appends every event "
            "to the spool in %s",
            " and ".join(given),
            "is" if len(given) == 1 else "are",
            observer.settings.spool_dir,
        )


def _warn_if_nowhere(observer: Observer) -> None:
    """Warn once when nothing outlives the process: metrics only in a private registry."""
    if any(sink is not observer.prometheus_sink for sink in observer.sinks):
        return
    if observer.metrics_server is not None or observer.settings.prometheus_textfile:
        return
    fixes = ", ".join(
        f"{name} ({setting(name).env})"
        for name in ("catalog_url", "traces_file", "otlp_endpoint", "spool_dir", "prometheus_port")
    )
    log.warning(
        "odibi-observe: no durable destination: node runs are recorded only in this "
        "process's private Prometheus registry, which nothing reads and which ends with the "
        "process; set one of %s (or pass registry=prometheus_client.REGISTRY to expose them "
        "on the application's own /metrics)",
        fixes,
    )


def get_observer() -> Observer:
    """The current observer, configured from the environment on first use."""
    observer = _observer
    if observer is not None:
        return observer
    with _lock:
        if _observer is None:
            configure()
        assert _observer is not None
        return _observer


def current_observer() -> Observer | None:
    """The current observer, or None: unlike :func:`get_observer`, never configures one."""
    return _observer


def swap_observer(observer: Observer | None) -> Observer | None:
    """Make ``observer`` current (None: no observer) and return the one it replaces,
    which is *not* shut down.

    For code that sets the process's observer aside for a while and puts it back afterwards
    (:func:`odibi_observe.testing.capture_runs`): the caller owns what it gets back and hands
    it back here, or shuts it down. The heartbeat thread follows the observer made current.
    """
    global _observer
    with _lock:
        previous, _observer = _observer, observer
        _run_heartbeat(0 if observer is None else observer.settings.heartbeat_interval)
    return previous


def flush(timeout: float | None = 30.0) -> bool:
    """Deliver every pending record to every sink; True if all confirmed within ``timeout``."""
    observer = _observer
    return True if observer is None else observer.flush(timeout)


def shutdown(timeout: float | None = 30.0, *, spill: bool = False) -> bool:
    """Flush and release the current observer (sinks, threads, servers). Idempotent.

    What is still undelivered after ``timeout`` is dropped and counted — unless ``spill``,
    which keeps it in the spool directory as the exit hooks do (:func:`_shutdown_at_exit`):
    for a command that ends its process right after, like ``odibi-observe run``.
    """
    global _observer
    with _lock:
        observer, _observer = _observer, None
        _run_heartbeat(0)
    if observer is None:
        return True
    return observer.shutdown(timeout, keeper=_spill_keeper(observer.settings) if spill else None)


def _spill_keeper(settings: Settings) -> Keeper | None:
    """Where undelivered events go at exit; none in sidecar mode, where the spool is the sink
    (what it refused at exit is counted as dropped)."""
    if settings.mode == "sidecar":
        return None
    return SpoolKeeper(
        settings.spool_dir or default_spill_dir(),
        max_bytes=settings.spool_max_bytes,
        fsync=settings.spool_fsync,
    )


# -- the heartbeat thread ------------------------------------------------------------------

#: The process's heartbeat thread; it runs while an observer is current (see heartbeat.py).
_heartbeat: Heartbeat | None = None


def _run_heartbeat(interval: float) -> None:
    """Run the heartbeat thread at ``interval`` seconds, or stop it (0). Under ``_lock``.

    The thread is the current observer's: :func:`configure` starts it (or keeps it, at the
    same interval) and :func:`shutdown` stops it, so a shut-down process has no thread left
    emitting into a closed bus.
    """
    global _heartbeat
    current = _heartbeat
    if current is not None and current.interval == interval:
        current.start()
        return
    if current is not None:
        current.stop()
    _heartbeat = Heartbeat(interval) if interval > 0 else None
    if _heartbeat is not None:
        _heartbeat.start()


def heartbeat_running() -> bool:
    """Whether this process's heartbeat thread is running (it does while an observer with a
    positive ``heartbeat_interval`` is current)."""
    current = _heartbeat
    return current is not None and current.running


def _after_fork_in_child() -> None:
    # Threads do not survive fork; the lock may have been held by one at that moment.
    global _lock
    _lock = threading.RLock()
    if _heartbeat is not None:
        _heartbeat.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- exit paths ---------------------------------------------------------------------------

_hooks_installed = False


def _install_exit_hooks(settings: Settings) -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_at_exit)
    _register_multiprocessing_exit()
    if not settings.handle_sigterm or threading.current_thread() is not threading.main_thread():
        return
    try:
        current = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):  # pragma: no cover - platforms without SIGTERM
        return
    # Only take over the default action: an application with its own SIGTERM handler decides
    # what termination means (its handler usually raises, and the node records that itself).
    if current is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


class _ForkToken:
    """A long-lived object for ``multiprocessing.util.register_after_fork`` (weakly held)."""


_fork_token = _ForkToken()


def _register_multiprocessing_exit() -> None:
    """Run the exit close in ``multiprocessing`` children too.

    A ``multiprocessing`` child (fork start method) ends with ``os._exit`` after its target
    returns, so ``atexit`` never runs there and events still queued in the background bus —
    the child's whole record — would be lost. multiprocessing runs its own "finalizers" before
    that exit, but clears them when the child starts; ``register_after_fork`` is the hook that
    runs after the clearing, so the finalizer is registered from there, in each child.
    """
    import multiprocessing.util as mp_util

    def in_child(_token: object) -> None:
        mp_util.Finalize(None, _at_exit, exitpriority=100)

    mp_util.register_after_fork(_fork_token, in_child)


def _close_active(error_type: str, message: str) -> None:
    crash_active_runs(error_type, message)


def _shutdown_at_exit() -> None:
    """Deliver what can be delivered within ``exit_timeout``, keep the rest on disk.

    The process is ending: a backend that is down or hangs must not hold it (the deadline is
    shared by every sink), and what no sink confirmed is appended to the spool directory
    (``spool_dir``, else :func:`~odibi_observe._spill.default_spill_dir`) for a sidecar or
    ``odibi-observe sweep --spool-dir`` to deliver.
    """
    observer = _observer
    if observer is not None:
        shutdown(observer.settings.exit_timeout, spill=True)


def _at_exit() -> None:
    _close_active(CRASH_PROCESS_EXIT, "the interpreter exited while the node was running")
    _shutdown_at_exit()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _close_active(CRASH_SIGTERM, "the process received SIGTERM while the node was running")
    _shutdown_at_exit()
    # Let the default action happen: the process terminates with the usual SIGTERM status.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
