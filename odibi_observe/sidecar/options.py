"""What a sidecar is told: :class:`SidecarOptions` and the defaults the command line shows.

Kept apart from the sidecar's machinery (and importing only :mod:`odibi_observe.config`) so
that building the command-line parser, and ``odibi-observe --help``, does not import
SQLAlchemy and protobuf. :mod:`odibi_observe.sidecar` re-exports everything here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final

from odibi_observe.config import (
    ConfigurationError,
    option_field,
    parse_listen,
    setting,
    sidecar_setting,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PORT",
    "TRACES_PATH",
    "SidecarOptions",
    "parse_listen",
]

#: The sidecar's defaults come from the one settings table (odibi_observe.config.SETTINGS);
#: these names are kept for the modules that import them.
DEFAULT_HOST: Final[str] = setting("sidecar_listen").default[0]
#: The port OpenTelemetry's Prometheus exporter conventionally uses.
DEFAULT_PORT: Final[int] = setting("sidecar_listen").default[1]
#: The OTLP/HTTP path of the traces signal.
TRACES_PATH: Final = "/v1/traces"
#: Largest accepted OTLP body, compressed or not (see the settings table for why 8 MiB).
DEFAULT_MAX_BODY_BYTES: Final[int] = setting("sidecar_max_body").default


@dataclass(frozen=True)
class SidecarOptions:
    """Everything a sidecar is told; the CLI's options map one to one onto these fields.

    Durations are seconds, sizes bytes; defaults, variables and meanings are in the settings
    table (``docs/configuration.md``). ``sweep_interval=0`` turns the sweeper off (another
    sidecar sweeps, or ``odibi-observe sweep`` runs from cron). ``pid_check=False`` makes the
    sweeper judge runs by heartbeats only — required when the sidecar cannot see the pipeline
    processes (a container without a shared pid namespace), where every pid looks dead.
    ``ledger=False`` answers ``/v1/traces`` with 404. ``stuck_after`` is how late a loop, or
    how long an export, may be before ``/healthz`` says 503. ``max_batch`` is the number of
    spooled events per export; ``poll_interval`` how long an idle pump waits before looking
    at the spool again.
    """

    catalog_url: str
    spool_dir: str
    listen_host: str = DEFAULT_HOST
    listen_port: int = DEFAULT_PORT
    token: str | None = option_field("token")
    max_body_bytes: int = option_field("max_body_bytes")
    ledger: bool = option_field("ledger")
    sweep_interval: float = option_field("sweep_interval")
    heartbeat_timeout: float = option_field("heartbeat_timeout")
    all_hosts: bool = option_field("all_hosts")
    pid_check: bool = option_field("pid_check")
    fsync: str = option_field("fsync")
    spool_max_bytes: int = option_field("spool_max_bytes")
    gc_interval: float = option_field("gc_interval")
    drain_timeout: float = option_field("drain_timeout")
    stuck_after: float = option_field("stuck_after")
    max_batch: int = option_field("max_batch")
    poll_interval: float = 0.2

    def __post_init__(self) -> None:
        # Each value is checked by its setting's own parser: the rules that apply to
        # --max-batch apply to SidecarOptions(max_batch=...) as well.
        for f in fields(self):
            try:
                entry = sidecar_setting(f.name)
            except KeyError:
                continue
            value = getattr(self, f.name)
            if value is None and entry.default is None:
                continue
            try:
                entry.parser(value)
            except ValueError as exc:
                raise ConfigurationError(f"{f.name}={value!r}: {exc}") from None
        if self.poll_interval <= 0:
            raise ConfigurationError("poll_interval must be > 0")
        if not 0 <= self.listen_port <= 65535:
            raise ConfigurationError(f"listen port {self.listen_port} is not a TCP port")
