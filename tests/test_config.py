"""Settings precedence: argument > ODIBI_OBSERVE_* > OTEL_* > default; clear errors."""

from __future__ import annotations

import pytest

from odibi_observe.config import ConfigurationError, hide_password, resolve_settings
from tests.helpers import Configure


def test_defaults_without_environment() -> None:
    s = resolve_settings({}, environ={})
    assert (s.project, s.environment, s.mode, s.prometheus_host) == (
        "default",
        "dev",
        "background",
        "127.0.0.1",
    )
    assert s.catalog_url is None and s.otlp_endpoint is None


def test_precedence_argument_then_ours_then_otel_then_default() -> None:
    env = {
        "OTEL_SERVICE_NAME": "from-otel",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318",
        "ODIBI_OBSERVE_OTLP_ENDPOINT": "http://ours:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging,team=data%20eng",
    }
    s = resolve_settings({"service_name": "from-arg"}, environ=env)
    assert s.service_name == "from-arg"
    assert s.otlp_endpoint == "http://ours:4318"
    assert s.otlp_protocol == "grpc"
    assert s.environment == "staging"
    assert s.resource_attributes["team"] == "data eng"
    assert resolve_settings({}, environ=env).service_name == "from-otel"


def test_typed_environment_values() -> None:
    s = resolve_settings(
        {},
        environ={
            "ODIBI_OBSERVE_PROMETHEUS_PORT": "9464",
            "ODIBI_OBSERVE_HANDLE_SIGTERM": "false",
            "ODIBI_OBSERVE_FLUSH_INTERVAL": "0.5",
        },
    )
    assert (s.prometheus_port, s.handle_sigterm, s.flush_interval) == (9464, False, 0.5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ODIBI_OBSERVE_PROMETHEUS_PORT": "nine"}, "ODIBI_OBSERVE_PROMETHEUS_PORT='nine'"),
        ({"ODIBI_OBSERVE_MODE": "turbo"}, "ODIBI_OBSERVE_MODE='turbo'"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}, "otlp_protocol"),
        ({"ODIBI_OBSERVE_HANDLE_SIGTERM": "maybe"}, "expected true or false"),
        ({"ODIBI_OBSERVE_MAX_QUEUE": "0"}, "ODIBI_OBSERVE_MAX_QUEUE='0'"),
    ],
)
def test_invalid_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        resolve_settings({}, environ=env)


def test_unknown_argument_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="catalog_uri"):
        resolve_settings({"catalog_uri": "x"}, environ={})


def test_configure_falls_back_to_defaults_unless_strict(
    caplog: pytest.LogCaptureFixture, fresh_observer: Configure
) -> None:

    with caplog.at_level("WARNING", logger="odibi_observe"):
        observer = fresh_observer(mode="turbo", sinks=[])
    assert observer.settings.mode == "background"
    assert "mode='turbo'" in caplog.text
    with pytest.raises(ConfigurationError):
        fresh_observer(mode="turbo", sinks=[], strict=True)


def test_catalog_password_is_never_printed() -> None:
    url = "postgresql+psycopg://etl:s3cr3t@db.internal:5432/catalog"
    s = resolve_settings({"catalog_url": url}, environ={})
    assert "s3cr3t" not in str(s.describe())
    assert "s3cr3t" not in hide_password(url)
    assert "s3cr3t" not in hide_password("not a url://etl:s3cr3t@x")
