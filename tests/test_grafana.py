"""Dashboards as code: the committed files are current, deterministic, and consistent.

Grafana itself cannot run here, so what Grafana would check on load is checked structurally:
the JSON round-trips through grafana-foundation-sdk's models, every panel's data source is one
the provisioning creates, every variable a query uses is defined. The queries themselves run
against a real Prometheus (test_grafana_prometheus.py) and PostgreSQL
(test_grafana_postgres.py).
"""

from __future__ import annotations

import io
import json
import os
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml

# The SDK comes with the dev extra; without it these tests skip, except in CI.
if os.environ.get("CI", "").lower() != "true":
    pytest.importorskip("grafana_foundation_sdk")

from grafana_foundation_sdk.models import prometheus as prom_models

from odibi_observe.catalog import schema
from odibi_observe.cli import main
from odibi_observe.conventions import FIELDS, MetricKind, all_metrics
from odibi_observe.grafana import alerts, expand, provisioning, render
from odibi_observe.grafana.dashboards import build_dashboards
from odibi_observe.grafana.datasources import ALL as DATASOURCES
from odibi_observe.grafana.postgres import SqlDataquery, SqlFormat, SqlQuery

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
GRAFANA_SOURCES = sorted((ROOT / "odibi_observe" / "grafana").glob("*.py"))

#: Variables Grafana defines itself.
BUILTIN_VARIABLES = {"__range", "__interval", "__rate_interval"}
#: Label names Prometheus defines, not odibi-observe.
PROMETHEUS_LABELS = {"le", "job", "instance"}


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _dashboard_files() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dash.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _targets(dash: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in _panels(dash) for t in p.get("targets", [])]


# --- generation -------------------------------------------------------------------------------


def test_committed_files_are_current() -> None:
    """`dashboards build --check` is clean on the repository (what CI runs)."""
    code, out, err = _run("dashboards", "build", "--check", "--out", str(DASHBOARDS))
    assert code == 0, err
    assert "current" in out


def test_check_names_every_stale_file(tmp_path: Path) -> None:
    code, _, _ = _run("dashboards", "build", "--out", str(tmp_path))
    assert code == 0
    (tmp_path / "odibi-sidecar-health.json").write_text("{}\n")
    (tmp_path / render.RULES_FILE).unlink()
    (tmp_path / "old-dashboard.json").write_text("{}\n")
    code, _, err = _run("dashboards", "build", "--check", "--out", str(tmp_path))
    assert code == 1
    named = {line.strip() for line in err.splitlines()[1:]}
    assert named == {
        str(tmp_path / n)
        for n in ("odibi-sidecar-health.json", render.RULES_FILE, "old-dashboard.json")
    }
    # A build repairs what it generates (an extra file is the operator's to delete).
    assert _run("dashboards", "build", "--out", str(tmp_path))[0] == 0
    assert render.stale(tmp_path) == ["old-dashboard.json"]


def test_build_is_deterministic() -> None:
    first, second = render.generated_files(), render.generated_files()
    assert first == second
    for rel, text in first.items():
        assert not re.search(r"20\d\d-\d\d-\d\d", text), f"{rel} holds a date"
        if rel.endswith(".json"):
            data = json.loads(text)
            assert "version" not in data and "id" not in data, rel
            assert text == json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
            ids = [p["id"] for p in _panels(data)]
            assert ids == list(range(1, len(ids) + 1)), f"{rel}: panel ids not stable"


def test_generated_yaml_is_the_data_it_was_written_from() -> None:
    files = render.generated_files()
    for rel, document in {
        render.DATASOURCES_FILE: provisioning.datasources_document(),
        render.PROVIDER_FILE: provisioning.dashboard_provider_document(),
        render.RULES_FILE: alerts.rules_document(),
        render.PROMETHEUS_FILE: provisioning.prometheus_document(),
    }.items():
        assert yaml.safe_load(files[rel]) == json.loads(json.dumps(document)), rel


# --- the SDK's models -------------------------------------------------------------------------


def test_dashboards_round_trip_through_the_sdk_models() -> None:
    for name, data in _dashboard_files().items():
        text = (DASHBOARDS / name).read_text()
        model = render.load_dashboard(text)
        assert render.dashboard_json(model) == text, name
        for panel in model.panels or []:
            for target in getattr(panel, "targets", None) or []:
                ref = panel.datasource
                assert ref is not None
                if ref.type_val == "prometheus":
                    assert isinstance(target, prom_models.Dataquery)
                else:
                    assert isinstance(target, SqlDataquery), (name, panel.title)
        assert data["uid"] == model.uid


def test_sql_dataquery_implements_the_sdk_protocol() -> None:
    query = SqlQuery().raw_sql("SELECT 1").format(SqlFormat.TIME_SERIES).ref_id("B").build()
    assert query.to_json() == {
        "rawSql": "SELECT 1",
        "refId": "B",
        "format": "time_series",
        "editorMode": "code",
        "rawQuery": True,
        "datasource": {"type": "grafana-postgresql-datasource", "uid": "odibi-catalog"},
    }
    assert SqlDataquery.from_json(query.to_json()).to_json() == query.to_json()


# --- data sources and variables -----------------------------------------------------------------


def test_every_data_source_used_is_provisioned() -> None:
    provisioned = yaml.safe_load((DASHBOARDS / render.DATASOURCES_FILE).read_text())
    known = {(d["uid"], d["type"]) for d in provisioned["datasources"]}
    assert known == {(d.uid, d.type) for d in DATASOURCES}
    for name, dash in _dashboard_files().items():
        for panel in _panels(dash):
            if panel["type"] == "row":
                continue
            ref = panel["datasource"]
            assert (ref["uid"], ref["type"]) in known, (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"] == ref, (name, panel["title"])
            for override in panel["fieldConfig"]["overrides"]:
                for prop in override["properties"]:
                    for link in prop["value"] if prop["id"] == "links" else []:
                        internal = link.get("internal")
                        if internal:
                            assert (internal["datasourceUid"], "tempo") in known
        for var in dash["templating"].get("list", []):
            assert (var["datasource"]["uid"], var["datasource"]["type"]) in known


def test_every_variable_a_query_uses_is_defined() -> None:
    for name, dash in _dashboard_files().items():
        defined = {v["name"] for v in dash["templating"].get("list", [])}
        used: set[str] = set()
        texts = [t.get("expr") or t.get("rawSql") or "" for _, t in _targets(dash)]
        texts += [v["query"] for v in dash["templating"].get("list", [])]
        for text in texts:
            for braced, plain in re.findall(r"\$\{(\w+)[^}]*\}|\$(\w+)\b(?!\()", text):
                used.add(braced or plain)
        assert used - BUILTIN_VARIABLES <= defined, name
        # A variable's query only uses the variables before it (they cascade).
        order = [v["name"] for v in dash["templating"].get("list", [])]
        for i, var in enumerate(dash["templating"].get("list", [])):
            refs = set(re.findall(r"\$(\w+)", var["query"]))
            assert refs <= set(order[:i]), (name, var["name"])


def test_drilldown_requires_project_pipeline_node_environment() -> None:
    dash = _dashboard_files()["odibi-node-drilldown.json"]
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == [
        FIELDS.project.label,
        FIELDS.environment.label,
        FIELDS.pipeline.label,
        FIELDS.node.label,
    ]


def test_catalog_rows_link_to_their_trace_and_overrides_name_real_columns() -> None:
    linked = 0
    for built in build_dashboards():
        data = json.loads(render.dashboard_json(built.model))
        by_sql = {q.sql: q for q in built.sql}
        sql_targets = [(p, t) for p, t in _targets(data) if "rawSql" in t]
        assert [t["rawSql"] for _, t in sql_targets] == [q.sql for q in built.sql]
        for panel, target in sql_targets:
            query = by_sql[target["rawSql"]]
            assert target["format"] == ("time_series" if query.time_series else "table")
            for override in panel["fieldConfig"]["overrides"]:
                assert override["matcher"]["options"] in query.columns, panel["title"]
            if schema.TRACE_ID in query.columns:
                names = {o["matcher"]["options"] for o in panel["fieldConfig"]["overrides"]}
                assert schema.TRACE_ID in names, panel["title"]
                linked += 1
    assert linked >= 6


# --- names come from the conventions ---------------------------------------------------------


def _known_series() -> set[str]:
    names = {"up"}
    for m in all_metrics():
        names.add(m.prometheus)
        if m.kind is MetricKind.HISTOGRAM:
            names |= {f"{m.prometheus}_{s}" for s in ("bucket", "sum", "count")}
    return names


def _known_labels() -> set[str]:
    return {label for m in all_metrics() for label in m.labels} | PROMETHEUS_LABELS


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """Series names and label names in a PromQL expression (enough for these queries)."""
    functions = {
        "sum",
        "rate",
        "increase",
        "histogram_quantile",
        "time",
        "min",
        "max",
        "absent",
        "deriv",
        "min_over_time",
        "label_values",
        "by",
        "on",
        "and",
        "or",
    }
    stripped = re.sub(r'"[^"]*"|\[[^\]]*\]|\b\d[\w.]*', " ", expr)
    series = {
        n
        for n in re.findall(r"[a-zA-Z_:][\w:]*", stripped)
        if n not in functions and not n.startswith("__")
    }
    labels = set(re.findall(r"(\w+)\s*=~?\s*\"", expr))
    for group in re.findall(r"(?:by|on) \(([^)]*)\)", expr):
        labels |= {g.strip() for g in group.split(",")}
    labels |= set(re.findall(r"label_values\(.*,\s*(\w+)\)$", expr))
    return series - labels, labels


def test_every_promql_name_is_in_the_conventions() -> None:
    exprs = []
    for dash in _dashboard_files().values():
        exprs += [t["expr"] for _, t in _targets(dash) if "expr" in t]
        exprs += [v["query"] for v in dash["templating"].get("list", [])]
    rules = yaml.safe_load((DASHBOARDS / render.RULES_FILE).read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) > 50
    for expr in exprs:
        series, labels = promql_names(expr)
        assert series <= _known_series(), (series - _known_series(), expr)
        assert labels <= _known_labels(), (labels - _known_labels(), expr)


def test_builders_never_spell_a_metric_table_or_column() -> None:
    names = {m.prometheus for m in all_metrics()}
    for table in schema.metadata.tables.values():
        names.add(table.name)
        names |= {c.name for c in table.columns}
    for source in GRAFANA_SOURCES:
        text = source.read_text()
        for name in names:
            for quoted in (f'"{name}"', f"'{name}'", f"{name}{{", f"FROM {name}"):
                assert quoted not in text, f"{source.name} spells {quoted}"


def test_sql_and_promql_expansion_follows_grafana() -> None:
    from datetime import datetime, timezone

    t0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    t1 = datetime(2025, 1, 2, 9, 4, 5, tzinfo=timezone.utc)
    text = expand.sql(
        "SELECT $__timeGroup(started_at, $__interval) AS time WHERE $__timeFilter(started_at) "
        "AND a IN ($p) AND b = '$n' AND c < $__timeTo()",
        {"p": ["x", "o'k"], "n": "it's"},
        time_from=t0,
        time_to=t1,
        interval="5m",
    )
    assert text == (
        "SELECT floor(extract(epoch from started_at)/300)*300 AS time WHERE started_at BETWEEN "
        "'2025-01-02T03:04:05Z' AND '2025-01-02T09:04:05Z' AND a IN ('x','o''k') AND "
        "b = 'it''s' AND c < '2025-01-02T09:04:05Z'"
    )
    assert (
        expand.promql(
            'x{a=~"$p", b="$n"}[$__rate_interval]',
            {"p": ["a.b", "c"], "n": "d"},
            interval="1m",
            rate_interval="2m",
            range_="1h",
        )
        == 'x{a=~"(a\\\\.b|c)", b="d"}[2m]'
    )
    with pytest.raises(ValueError, match="no value"):
        expand.promql('x{a="$missing"}', {}, interval="1m", rate_interval="1m", range_="1h")


def test_docs_describe_every_panel_and_alert() -> None:
    docs = (ROOT / "docs" / "dashboards.md").read_text()
    for name, dash in _dashboard_files().items():
        for panel in _panels(dash):
            if panel["type"] != "row":
                assert panel["title"] in docs, f"docs/dashboards.md misses {name}: {panel['title']}"
    rules = yaml.safe_load((DASHBOARDS / render.RULES_FILE).read_text())
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert rule["alert"] in docs
