"""The deployment files: docker-compose.yml, the Collector configuration, the PostgreSQL init.

Docker cannot run here, so compose and the Collector are checked structurally (PyYAML): every
service, volume, pipeline component and extension referenced is defined, images are pinned,
no port is published beyond 127.0.0.1, passwords have no defaults, and the names the files
share (service names, ports, environment variables) agree with each other and with the
generated Prometheus and Grafana files. The Collector's redaction patterns are run on sample
secrets with Python's ``re`` (the same syntax RE2 accepts for them).

The PostgreSQL init script is not checked structurally: it runs, against the real test server,
with the environment the compose file gives it; then the catalog is created and filled as its
owner, and every SQL panel query runs as the read-only role it created, which cannot write.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
COLLECTOR = ROOT / "collector-config" / "otelcol.yaml"
INIT_SCRIPT = ROOT / "deploy" / "postgres" / "initdb.d" / "10-odibi-roles.sh"

#: One-shot services: they exit, so they have no healthcheck and are not restarted.
ONE_SHOT = {"catalog-migrate", "volume-init"}
#: Services whose image has nothing Docker could run as a healthcheck (built FROM scratch).
NO_HEALTHCHECK = {"otel-collector"}


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def _collector() -> dict[str, Any]:
    return dict(yaml.safe_load(COLLECTOR.read_text()))


# --- docker-compose.yml ---------------------------------------------------------------------


def test_compose_services_are_complete_and_consistent() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) >= {
        "postgres",
        "otel-collector",
        "tempo",
        "prometheus",
        "grafana",
        "sidecar",
        "demo-pipeline",
        "catalog-migrate",
    }
    volumes = set(compose["volumes"])
    used_volumes = set()
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, (name, dep)
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)
            else:
                assert source in volumes, (name, source)
                used_volumes.add(source)
        long_running = name not in ONE_SHOT
        assert (service.get("restart") == "unless-stopped") == long_running, name
        if long_running and name not in NO_HEALTHCHECK:
            assert "healthcheck" in service, f"{name} has no healthcheck"
    assert used_volumes == volumes


def test_compose_images_are_pinned() -> None:
    for name, service in _compose()["services"].items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", (name, image)
        if "build" not in service:
            assert re.fullmatch(r"v?\d+\.\d+(\.\d+)?(-[\w.]+)?", tag), (name, image)
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M)
    assert base and re.fullmatch(r"[\w/.-]+:\d+\.\d+\.\d+-[\w-]+", base.group(1))


def test_compose_publishes_ports_on_localhost_only() -> None:
    published = 0
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)
            published += 1
    assert published >= 6


def test_compose_has_no_default_passwords() -> None:
    text = COMPOSE.read_text()
    secrets = list(re.finditer(r"\$\{(\w*(?:PASSWORD|TOKEN)\w*)([^}]*)\}", text))
    assert len(secrets) >= 8
    for match in secrets:
        assert match.group(2).startswith(":?"), f"{match.group(1)} may be unset or defaulted"
    compose = _compose()
    grafana = compose["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    for service in compose["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key or "TOKEN" in key:
                assert str(value).startswith("${"), key


def test_compose_feeds_every_variable_the_provisioning_reads() -> None:
    from odibi_observe.grafana import render

    provisioning = (ROOT / "dashboards" / render.DATASOURCES_FILE).read_text()
    needed = set(re.findall(r"\$\{(\w+)\}", provisioning))
    assert needed
    assert needed <= set(_compose()["services"]["grafana"]["environment"])
    init = INIT_SCRIPT.read_text()
    init_vars = set(re.findall(r"\$\{(\w+)", init)) - {"POSTGRES_USER"}
    assert init_vars <= set(_compose()["services"]["postgres"]["environment"])


def test_sidecar_follows_its_command_line_contract() -> None:
    services = _compose()["services"]
    sidecar = services["sidecar"]
    command = " ".join(sidecar["command"])
    assert re.search(
        r"odibi-observe sidecar --catalog \S+ --spool-dir \S+ "
        r"--listen 0\.0\.0\.0:9464",
        command,
    ), command
    spool = command.split("--spool-dir ")[1].split()[0]
    # The demo pipeline spools into the very directory the sidecar reads, on the same volume.
    demo = services["demo-pipeline"]
    assert demo["environment"]["ODIBI_OBSERVE_MODE"] == "sidecar"
    assert demo["environment"]["ODIBI_OBSERVE_SPOOL_DIR"] == spool
    volume = next(m.split(":")[0] for m in sidecar["volumes"] if m.endswith(f":{spool}"))
    assert f"{volume}:{spool}" in demo["volumes"]


def test_reconciliation_writes_the_file_prometheus_reads() -> None:
    services = _compose()["services"]
    command = " ".join(services["reconcile"]["command"])
    textfile = re.search(r"--metrics-textfile (\S+);", command)
    assert textfile and '--traces "ledger:' in command
    directory = textfile.group(1).rsplit("/", 1)[0]
    volume = next(
        m.split(":")[0] for m in services["reconcile"]["volumes"] if m.split(":")[1] == directory
    )
    exporter = services["reconcile-metrics"]
    mounted = next(m.split(":")[1] for m in exporter["volumes"] if m.startswith(f"{volume}:"))
    assert f"--collector.textfile.directory={mounted}" in exporter["command"]


def test_collector_sends_the_token_the_sidecar_requires() -> None:
    services = _compose()["services"]
    required = services["sidecar"]["environment"]["ODIBI_OBSERVE_SIDECAR_TOKEN"]
    header = _collector()["exporters"]["otlphttp/sidecar"]["headers"]["Authorization"]
    variable = re.fullmatch(r"Bearer \$\{env:(\w+)\}", header)
    assert variable, header
    assert services["otel-collector"]["environment"][variable.group(1)] == required


def test_prometheus_targets_are_compose_services() -> None:
    services = _compose()["services"]
    config = yaml.safe_load((ROOT / "dashboards" / "prometheus" / "prometheus.yml").read_text())
    ports = {
        "sidecar": "9464",
        "reconcile-metrics": "9100",
        "otel-collector": str(
            _collector()["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"][
                "prometheus"
            ]["port"]
        ),
        "tempo": "3200",
        "localhost": "9090",
    }
    for job in config["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            assert host in services or host == "localhost", target
            assert ports[host] == port, target


# --- the Collector ------------------------------------------------------------------------------


def test_collector_references_only_defined_components() -> None:
    config = _collector()
    service = config["service"]
    for ext in service["extensions"]:
        assert ext in config["extensions"], ext
    assert set(config["extensions"]) == set(service["extensions"])
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for pipeline in service["pipelines"].values():
        for kind, names in used.items():
            for component in pipeline[kind]:
                assert component in config[kind], (kind, component)
                names.add(component)
    for kind, names in used.items():
        assert names == set(config[kind]), f"unused {kind}: {set(config[kind]) - names}"
    traces = service["pipelines"]["traces"]
    assert traces["processors"][0] == "memory_limiter"
    assert traces["processors"][-1] == "batch"
    for name, exporter in config["exporters"].items():
        queue = exporter.get("sending_queue")
        if queue is not None:
            assert queue["enabled"] and queue["storage"] in config["extensions"], name


def test_collector_endpoints_match_compose() -> None:
    config = _collector()
    exporters = config["exporters"]
    assert exporters["otlphttp/sidecar"]["endpoint"] == "http://sidecar:9464"
    tempo = yaml.safe_load((ROOT / "deploy" / "tempo" / "tempo.yaml").read_text())
    tempo_grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert exporters["otlp/tempo"]["endpoint"] == f"tempo:{tempo_grpc.rsplit(':', 1)[1]}"
    protocols = config["receivers"]["otlp"]["protocols"]
    published = {p.split(":")[1] for p in _compose()["services"]["otel-collector"]["ports"]}
    for protocol in protocols.values():
        host, port = protocol["endpoint"].rsplit(":", 1)
        assert host == "0.0.0.0" and port in published


def _ottl_string(text: str) -> str:
    """An OTTL string literal's value, with the Collector's ``$$`` escape undone."""
    return text.encode().decode("unicode_escape").replace("$$", "$")


def _redactions() -> list[tuple[str, str]]:
    statements = [
        s
        for block in _collector()["processors"]["transform/redact"]["trace_statements"]
        for s in block["statements"]
    ]
    out = []
    for statement in statements:
        args = re.findall(r'"((?:[^"\\]|\\.)*)"', statement)
        pattern, replacement = _ottl_string(args[-2]), _ottl_string(args[-1])
        out.append((pattern, re.sub(r"\$(\d)", r"\\\1", replacement)))
    return out


@pytest.mark.parametrize(
    ("secret", "redacted"),
    [
        ("connect failed: password=hunter2 host=db", "connect failed: password=*** host=db"),
        ("GET /api?token=abc123&x=1", "GET /api?token=***&x=1"),
        ("API_KEY=s3cr3t; retry", "API_KEY=***; retry"),
        (
            "source postgresql://etl:hunter2@crm.internal/crm",
            "source postgresql://etl:***@crm.internal/crm",
        ),
        (
            "nothing to hide in https://example.com/a:b",
            "nothing to hide in https://example.com/a:b",
        ),
    ],
)
def test_collector_redacts_secrets(secret: str, redacted: str) -> None:
    text = secret
    for pattern, replacement in _redactions():
        text = re.sub(pattern, replacement, text)
    assert text == redacted


# --- the PostgreSQL init script, run for real ---------------------------------------------------


def _psql_env(server: sa.engine.URL) -> dict[str, str]:
    return {
        **os.environ,
        "PGHOST": server.host or "127.0.0.1",
        "PGPORT": str(server.port or 5432),
        "PGPASSWORD": server.password or "",
        "POSTGRES_USER": server.username or "",
    }


def _as_superuser(server: sa.engine.URL, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """How to run the init script as the database superuser, as the container's entrypoint does.

    The test role may create databases but not roles it does not own. As root on the machine
    running the server, ``postgres`` over the local socket is the superuser (peer
    authentication); otherwise the test role is used and must be a superuser itself.
    """
    socket_dir = "/var/run/postgresql"
    if (
        os.geteuid() == 0
        and shutil.which("runuser")
        and os.path.isdir(socket_dir)
        and server.host in ("127.0.0.1", "localhost")
    ):
        env = {**env, "PGHOST": socket_dir, "POSTGRES_USER": "postgres"}
        env.pop("PGPASSWORD", None)
        return ["runuser", "-u", "postgres", "--"], env
    return [], env


def _drop_as_superuser(server: sa.engine.URL, database: str, roles: tuple[str, ...]) -> None:
    prefix, env = _as_superuser(server, _psql_env(server))
    statements = [f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)']
    statements += [f'DROP ROLE IF EXISTS "{role}"' for role in roles]
    for statement in statements:
        subprocess.run(
            [
                *prefix,
                "psql",
                "-v",
                "ON_ERROR_STOP=1",
                "--username",
                env["POSTGRES_USER"],
                "--dbname",
                "postgres",
                "-c",
                statement,
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )


@pytest.mark.postgres
def test_init_script_refuses_to_run_without_passwords(pg_server_url: str) -> None:
    env = _psql_env(sa.engine.make_url(pg_server_url))
    env.pop("ODIBI_GRAFANA_DB_PASSWORD", None)
    env["ODIBI_CATALOG_PASSWORD"] = "x"
    result = subprocess.run(
        ["sh", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode != 0
    assert "ODIBI_GRAFANA_DB_PASSWORD" in result.stderr


@pytest.mark.postgres
def test_readonly_role_reads_every_panel_and_writes_nothing(pg_server_url: str) -> None:
    pytest.importorskip("grafana_foundation_sdk")
    from tests.test_grafana_postgres import fill_catalog, run_panel_query, sql_queries

    server = sa.engine.make_url(pg_server_url)
    suffix = uuid.uuid4().hex[:10]
    # Not "oo_test_*": a pytest run starting meanwhile drops those as leftovers.
    database, owner, reader = f"oo_deploy_{suffix}", f"oo_owner_{suffix}", f"oo_reader_{suffix}"
    passwords = {
        "ODIBI_CATALOG_PASSWORD": uuid.uuid4().hex,
        "ODIBI_GRAFANA_DB_PASSWORD": uuid.uuid4().hex,
    }
    env = {
        **_psql_env(server),
        **passwords,
        "ODIBI_CATALOG_DB_NAME": database,
        "ODIBI_CATALOG_USER": owner,
        "ODIBI_GRAFANA_DB_USER": reader,
    }
    prefix, env = _as_superuser(server, env)
    try:
        subprocess.run(
            [*prefix, "sh", str(INIT_SCRIPT)], env=env, check=True, capture_output=True, timeout=60
        )
        # As in compose: the tables appear afterwards, created by the owner.
        owner_url = server.set(
            username=owner, password=passwords["ODIBI_CATALOG_PASSWORD"], database=database
        ).render_as_string(hide_password=False)
        fill_catalog(owner_url)
        reader_engine = sa.create_engine(
            server.set(
                username=reader, password=passwords["ODIBI_GRAFANA_DB_PASSWORD"], database=database
            )
        )
        try:
            with reader_engine.connect() as conn:
                for uid, query in sql_queries():
                    columns, rows = run_panel_query(conn, uid, query)
                    assert columns == list(query.columns) and rows, query.key
                conn.rollback()
                for statement in (
                    "DELETE FROM meta_runs",
                    "CREATE TABLE evil (x int)",
                    "SET TRANSACTION READ WRITE; DELETE FROM meta_runs",
                ):
                    with pytest.raises(sa.exc.DBAPIError):
                        conn.exec_driver_sql(statement)
                    conn.rollback()
        finally:
            reader_engine.dispose()
    finally:
        _drop_as_superuser(server, database, (reader, owner))
