"""Settings and their precedence.

Every setting can come from three places. The first that is set wins:

1. an argument to :func:`odibi_observe.configure` (``None`` means "not set");
2. an ``ODIBI_OBSERVE_<NAME>`` environment variable (``ODIBI_OBSERVE_CATALOG_URL``, ...);
3. the standard OpenTelemetry variable, where one exists: ``OTEL_SERVICE_NAME``,
   ``OTEL_EXPORTER_OTLP_ENDPOINT`` (and ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``),
   ``OTEL_EXPORTER_OTLP_PROTOCOL``, ``OTEL_RESOURCE_ATTRIBUTES`` (``service.name`` and
   ``deployment.environment`` in it are honoured too);
4. the default in :class:`Settings`.

An ``ODIBI_OBSERVE_*`` variable beats its ``OTEL_*`` counterpart because it is the more
specific statement: a deployment may point the whole process's OTel SDK at one collector and
odibi-observe's node spans at another.

Invalid values never raise into the pipeline at run time: :func:`resolve_settings` raises
:class:`ConfigurationError` with the variable's name, which :func:`configure` turns into a
logged error and a fallback to defaults (``strict=True`` re-raises, for tests and CLIs).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final

ENV_PREFIX: Final = "ODIBI_OBSERVE_"

MODES: Final = ("inline", "background", "sidecar")
FSYNC_POLICIES: Final = ("always", "interval", "never")
OTLP_PROTOCOLS: Final = ("http/protobuf", "http/json", "grpc")


class ConfigurationError(ValueError):
    """A setting has a value odibi-observe cannot use; the message names the setting."""


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Field names are the ``configure()`` keywords."""

    project: str = "default"
    environment: str = "dev"
    service_name: str = "odibi-pipeline"
    catalog_url: str | None = None
    otlp_endpoint: str | None = None
    otlp_protocol: str = "http/protobuf"
    otlp_timeout: float = 10.0
    traces_file: str | None = None
    prometheus_port: int | None = None
    prometheus_host: str = "127.0.0.1"
    prometheus_textfile: str | None = None
    mode: str = "background"
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    max_queue: int = 10_000
    max_batch: int = 512
    flush_interval: float = 0.1
    max_label_series: int = 2_000
    max_attribute_length: int = 4_096
    max_error_message_length: int = 8_192
    max_name_length: int = 255
    handle_sigterm: bool = True
    otel_metrics: bool = True
    host: str = field(default_factory=socket.gethostname)
    spool_dir: str | None = None
    spool_fsync: str = "interval"
    spool_max_bytes: int = 512 * 2**20
    heartbeat_interval: float = 30.0
    exit_timeout: float = 3.0

    def describe(self) -> dict[str, Any]:
        """Settings as a dict safe to print: the catalog URL's password is hidden."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.catalog_url:
            out["catalog_url"] = hide_password(self.catalog_url)
        out["resource_attributes"] = dict(self.resource_attributes)
        return out


_INT_FIELDS: Final = {"prometheus_port", "max_queue", "max_batch", "max_label_series",
                      "max_attribute_length", "max_error_message_length", "max_name_length",
                      "spool_max_bytes"}
_FLOAT_FIELDS: Final = {"flush_interval", "otlp_timeout", "heartbeat_interval", "exit_timeout"}
_BOOL_FIELDS: Final = {"handle_sigterm", "otel_metrics"}
_TRUE: Final = {"1", "true", "yes", "on"}
_FALSE: Final = {"0", "false", "no", "off"}


def resolve_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Apply the precedence above; raise :class:`ConfigurationError` on an unusable value."""
    env = os.environ if environ is None else environ
    args = {k: v for k, v in (overrides or {}).items() if v is not None}
    known = {f.name for f in fields(Settings)}
    unknown = set(args) - known
    if unknown:
        raise ConfigurationError(f"unknown setting(s): {', '.join(sorted(unknown))}")

    resource = parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    otel_fallbacks: dict[str, str | None] = {
        "service_name": env.get("OTEL_SERVICE_NAME") or resource.get("service.name"),
        "environment": resource.get("deployment.environment.name")
        or resource.get("deployment.environment"),
        "otlp_endpoint": env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        "otlp_protocol": env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL"),
    }
    values: dict[str, Any] = {"resource_attributes": resource}
    for name in known - {"resource_attributes"}:
        if name in args:
            values[name] = args[name]
            continue
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None or raw == "":
            raw = otel_fallbacks.get(name)
        if raw is not None and raw != "":
            values[name] = _parse(name, raw, ENV_PREFIX + name.upper())
    if "resource_attributes" in args:
        values["resource_attributes"] = {**resource, **dict(args["resource_attributes"])}
    settings = replace(Settings(), **values)
    _validate(settings)
    return settings


def _parse(name: str, raw: str, source: str) -> Any:
    try:
        if name in _INT_FIELDS:
            return int(raw)
        if name in _FLOAT_FIELDS:
            return float(raw)
    except ValueError:
        raise ConfigurationError(f"{source}={raw!r}: expected a number") from None
    if name in _BOOL_FIELDS:
        try:
            return parse_bool(raw)
        except ValueError:
            raise ConfigurationError(f"{source}={raw!r}: expected true or false") from None
    return raw


# -- value parsers shared by the settings and the command line ----------------------------------

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_bool(text: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` (any case)."""
    low = text.strip().lower()
    if low in _TRUE | _FALSE:
        return low in _TRUE
    raise ValueError(f"{text!r} is not true or false")


def parse_positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{text!r} is not a positive whole number")
    return value


def parse_duration(text: str) -> float:
    """``"30s"``, ``"5m"``, ``"1.5h"``, ``"250ms"``, ``"2d"`` or ``"45"`` → seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m or 1h")
    return float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s").lower()]


def _validate(s: Settings) -> None:
    if s.mode not in MODES:
        raise ConfigurationError(f"mode={s.mode!r}: choose one of {', '.join(MODES)}")
    if s.otlp_protocol not in OTLP_PROTOCOLS:
        raise ConfigurationError(
            f"otlp_protocol={s.otlp_protocol!r}: choose one of {', '.join(OTLP_PROTOCOLS)}")
    if s.prometheus_port is not None and not 0 <= s.prometheus_port <= 65535:
        raise ConfigurationError(f"prometheus_port={s.prometheus_port}: not a TCP port")
    for name in ("max_queue", "max_batch", "max_label_series", "max_attribute_length",
                 "max_error_message_length", "max_name_length"):
        if getattr(s, name) < 1:
            raise ConfigurationError(f"{name}={getattr(s, name)}: must be at least 1")
    if s.mode == "sidecar" and not s.spool_dir:
        raise ConfigurationError(
            "mode='sidecar' needs spool_dir (ODIBI_OBSERVE_SPOOL_DIR): the directory the "
            "sidecar reads, shared with it")
    if s.spool_fsync not in FSYNC_POLICIES:
        raise ConfigurationError(
            f"spool_fsync={s.spool_fsync!r}: choose one of {', '.join(FSYNC_POLICIES)}")
    if s.spool_max_bytes < 1:
        raise ConfigurationError(f"spool_max_bytes={s.spool_max_bytes}: must be at least 1")
    if s.heartbeat_interval < 0:
        raise ConfigurationError(
            f"heartbeat_interval={s.heartbeat_interval}: must be >= 0 (0 turns heartbeats off)")
    if s.exit_timeout < 0:
        raise ConfigurationError(f"exit_timeout={s.exit_timeout}: must be >= 0 seconds")
    if s.flush_interval < 0 or s.otlp_timeout <= 0:
        raise ConfigurationError("flush_interval must be >= 0 and otlp_timeout > 0")
    for name in ("project", "environment", "service_name"):
        if not isinstance(getattr(s, name), str) or not getattr(s, name):
            raise ConfigurationError(f"{name} must be a non-empty string")


def parse_resource_attributes(raw: str) -> dict[str, str]:
    """Parse ``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k2=v2``, values percent-decoded)."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for part in raw.split(","):
        if "=" not in part:
            continue
        key, _, value = part.partition("=")
        if key.strip():
            out[key.strip()] = unquote(value.strip())
    return out


def hide_password(url: str) -> str:
    """Render a database URL with its password replaced by ``***``.

    Uses SQLAlchemy's parser when the URL is one; falls back to the text redactor otherwise,
    so even a malformed URL is never printed with its secret.
    """
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        from odibi_observe.redact import redact

        return redact(url)
