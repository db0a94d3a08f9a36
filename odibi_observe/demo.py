"""``odibi-observe demo``: a small pipeline recorded into all three sinks, then read back.

Runs on embedded defaults — a SQLite catalog, an OTLP-JSON trace file (the Collector ``file``
exporter format) and a Prometheus text file — so it needs no services. The pipeline has the
runs that matter: successes, an async node, a failure that carries suggestions, and a
catastrophic ``KeyboardInterrupt`` raised inside a node (caught here, by the demo, the way a
scheduler would). Afterwards the demo reads each sink back and checks that all three agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from prometheus_client import CollectorRegistry

import odibi_observe as oo
from odibi_observe._cliargs import make_out_dir
from odibi_observe._runview import failure_lines
from odibi_observe.config import ConfigurationError
from odibi_observe.conventions import METRICS, RunStatus

#: Written into the output directory: the files an earlier demo wrote there, which a later
#: demo may replace. Any other file of the same name is the user's, and is never overwritten.
MARKER = ".odibi-observe-demo"


class NodeExecutionError(Exception):
    """A node failure with actionable advice, shaped like Odibi's own exception."""

    def __init__(self, message: str, suggestions: Sequence[str]) -> None:
        super().__init__(message)
        self.suggestions = list(suggestions)


PIPELINE = "daily_sales"


@oo.observe_node(pipeline=PIPELINE)
def ingest_orders() -> list[dict[str, Any]]:
    rng = random.Random(7)
    return [
        {
            "order_id": i,
            "amount": round(rng.uniform(-5, 500), 2),
            "customer": f"c{rng.randrange(40)}",
        }
        for i in range(1_200)
    ]


@oo.observe_node(pipeline=PIPELINE)
def clean_orders(orders: list[dict[str, Any]]) -> list[dict[str, Any]]:
    clean = [o for o in orders if o["amount"] > 0]
    oo.current_run().set_attribute("rows_dropped", len(orders) - len(clean))
    return clean


@oo.observe_node(pipeline=PIPELINE)
async def fetch_fx_rates() -> list[tuple[str, float]]:
    await asyncio.sleep(0.01)
    return [("EUR", 1.08), ("GBP", 1.27), ("JPY", 0.0067)]


@oo.observe_node(pipeline=PIPELINE)
def enrich_customers(orders: list[dict[str, Any]]) -> list[dict[str, Any]]:
    raise NodeExecutionError(
        "column 'segment' not found in customers.csv "
        "(source postgresql://etl:hunter2@crm.internal/crm)",
        [
            "customers.csv changed shape: compare its header with the schema in "
            "pipelines/daily_sales.yaml",
            "re-run with --node enrich_customers once fixed",
        ],
    )


@oo.observe_node(pipeline=PIPELINE)
def aggregate_revenue(orders: list[dict[str, Any]]) -> list[dict[str, Any]]:
    totals: dict[str, float] = {}
    for o in orders:
        totals[o["customer"]] = totals.get(o["customer"], 0.0) + o["amount"]
    return [{"customer": c, "revenue": round(v, 2)} for c, v in sorted(totals.items())]


@oo.observe_node(pipeline=PIPELINE)
def publish_report(rows: list[dict[str, Any]]) -> None:
    oo.current_run().rows_processed = len(rows)
    raise KeyboardInterrupt("operator pressed Ctrl-C while the report was uploading")


@dataclass(frozen=True)
class DemoPaths:
    out: Path

    @property
    def catalog(self) -> Path:
        return self.out / "catalog.db"

    @property
    def traces(self) -> Path:
        return self.out / "traces.jsonl"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.prom"

    @property
    def catalog_url(self) -> str:
        return f"sqlite:///{self.catalog}"

    @property
    def marker(self) -> Path:
        return self.out / MARKER

    def files(self) -> tuple[Path, ...]:
        """What the demo writes (SQLite's own -wal/-shm/-journal files included)."""
        catalog = [
            self.catalog.with_name(self.catalog.name + s) for s in ("", "-wal", "-shm", "-journal")
        ]
        return (*catalog, self.traces, self.metrics)


def prepare(paths: DemoPaths, *, force: bool = False) -> None:
    """Make ``paths.out`` ready, or refuse: a file there that no earlier demo wrote is not
    replaced without ``force`` (:class:`~odibi_observe.config.ConfigurationError`, exit 2)."""
    make_out_dir(paths.out)
    ours = _written_before(paths)
    for path in paths.files():
        if path.exists() and not force and path.name not in ours:
            raise ConfigurationError(
                f"{path} exists and was not written by odibi-observe demo: not overwriting "
                "it (choose another --out, or pass --force to replace it)"
            )
    try:
        paths.marker.write_text(
            json.dumps({"files": [p.name for p in paths.files()]}) + "\n", encoding="utf-8"
        )
        for path in paths.files():
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"--out {str(paths.out)!r}: {exc.strerror or exc}") from None


def _written_before(paths: DemoPaths) -> set[str]:
    try:
        data = json.loads(paths.marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    files = data.get("files") if isinstance(data, dict) else None
    return {str(f) for f in files} if isinstance(files, list) else set()


def command_name() -> str:
    """How to run this program again, as the user can type it here: ``odibi-observe`` when
    that is what the shell finds, else the path of this very executable (``.venv/bin/...``).
    """
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if os.path.basename(argv0) != "odibi-observe":
        return "odibi-observe"
    found = shutil.which("odibi-observe")
    if found and os.path.realpath(found) == os.path.realpath(argv0):
        return "odibi-observe"
    relative = os.path.relpath(argv0)
    shown = relative if len(relative) < len(os.path.abspath(argv0)) else os.path.abspath(argv0)
    return shlex.quote(shown if os.sep in shown else os.path.join(".", shown))


def run_pipeline() -> None:
    """The example pipeline; failures are handled the way a scheduler would."""
    with oo.pipeline_run(PIPELINE):
        orders = clean_orders(ingest_orders())
        asyncio.run(fetch_fx_rates())
        # A failure is recorded with its suggestions; the pipeline carries on without it.
        with contextlib.suppress(NodeExecutionError):
            orders = enrich_customers(orders)
        report = aggregate_revenue(orders)
        # A catastrophic BaseException: recorded before it propagated to here.
        with contextlib.suppress(KeyboardInterrupt):
            publish_report(report)


def main(
    out: str = "odibi-observe-demo", stream: TextIO | None = None, *, force: bool = False
) -> int:
    """Run the demo into ``out``; print what was recorded and where. 0 when the sinks agree.

    A file in ``out`` that an earlier demo did not write is never replaced unless ``force``
    (:func:`prepare`)."""
    print_ = _printer(stream or sys.stdout)
    paths = DemoPaths(Path(out))
    prepare(paths, force=force)
    registry = CollectorRegistry()
    oo.configure(
        project="demo",
        environment="local",
        service_name="odibi-observe-demo",
        catalog_url=paths.catalog_url,
        traces_file=str(paths.traces),
        prometheus_textfile=str(paths.metrics),
        registry=registry,
        strict=True,
        handle_sigterm=False,
    )
    print_(f"running pipeline {PIPELINE!r} (6 nodes) with odibi-observe {oo.__version__} ...")
    run_pipeline()
    flushed = oo.flush(timeout=30)
    oo.shutdown()
    if not flushed:
        print_("warning: not every sink confirmed delivery within 30 s")
    return _report(paths, registry, print_)


def _printer(stream: TextIO) -> Any:
    def print_(text: str = "") -> None:
        stream.write(text + "\n")

    return print_


def _report(paths: DemoPaths, registry: CollectorRegistry, print_: Any) -> int:
    from odibi_observe._otlp_json import read_spans
    from odibi_observe.catalog import CatalogStore

    store = CatalogStore(paths.catalog_url)
    rows = sorted(store.recent_runs(limit=100), key=lambda r: r.started_ns)
    store.dispose()
    all_spans = read_spans(paths.traces)
    run_id_key = oo.FIELDS.run_id.attribute or ""
    spans = {s.attributes[run_id_key]: s for s in all_spans if run_id_key in s.attributes}
    print_()
    print_(f"{'node':<18} {'status':<9} {'rows':>6} {'ms':>6}  catalog  span  metrics")
    agree = True
    for rec in rows:
        span = spans.get(rec.run_id)
        span_ok = span is not None and _span_matches(span, rec)
        labels = dict(zip(METRICS.runs.labels, rec.label_values(METRICS.runs.labels), strict=True))
        metric_ok = (registry.get_sample_value(METRICS.runs.prometheus, labels) or 0) >= 1
        agree = agree and span_ok and metric_ok and rec.status is not RunStatus.RUNNING
        print_(
            f"{rec.node:<18} {rec.status.value:<9} "
            f"{'' if rec.rows_processed is None else rec.rows_processed:>6} "
            f"{rec.duration_ms if rec.duration_ms is not None else '':>6}  "
            f"{'yes':<7}  {'yes' if span_ok else 'NO':<4}  {'yes' if metric_ok else 'NO'}"
        )
        for line in failure_lines(rec):
            print_(line)
    pipeline_spans = len(all_spans) - len(spans)
    print_()
    print_(f"catalog     {paths.catalog}  ({len(rows)} rows in meta_runs)")
    print_(
        f"traces      {paths.traces}  ({len(spans)} node spans + {pipeline_spans} "
        "pipeline span, OTLP-JSON lines)"
    )
    print_(f"metrics     {paths.metrics}  (Prometheus text format)")
    print_()
    me = command_name()
    print_("look at them:")
    print_(f"  {me} runs --catalog {shlex.quote(paths.catalog_url)}")
    print_(f"  {me} runs --catalog {shlex.quote(paths.catalog_url)} --failures")
    print_(f"  grep {METRICS.runs.prometheus} {shlex.quote(str(paths.metrics))}")
    print_()
    if agree and rows:
        print_(f"all three sinks agree on {len(rows)} runs (same run_id, status, rows, duration)")
        return 0
    print_("the sinks DISAGREE: see the rows marked NO above")
    return 1


def _span_matches(span: Any, rec: oo.RunRecord) -> bool:
    attrs = span.attributes
    return bool(
        attrs.get(oo.FIELDS.status.attribute or "") == rec.status.value
        and attrs.get(oo.FIELDS.rows.attribute or "") == rec.rows_processed
        and span.span_id == rec.span_id
        and abs((span.end_ns - span.start_ns) / 1e6 - (rec.duration_ms or 0)) <= 1
    )
