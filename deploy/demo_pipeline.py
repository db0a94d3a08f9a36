"""The demo pipeline of ``odibi-observe demo``, run repeatedly as a compose service.

Configured from the environment only (``ODIBI_OBSERVE_*`` and ``OTEL_*``, set in
docker-compose.yml): in ``mode=sidecar`` every run event is appended to the spool shared with
the sidecar, which delivers it to the PostgreSQL catalog, to the OpenTelemetry Collector (and
from there to Tempo and back to its own span ledger) and to its /metrics, which Prometheus
scrapes. Every run includes a failure with suggestions and an interrupted node, so every
dashboard panel has something to show. :data:`ALIVE` is touched after every run, for the
container's healthcheck.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import odibi_observe as oo
from odibi_observe.demo import run_pipeline

INTERVAL_ENV = "ODIBI_DEMO_INTERVAL_SECONDS"
ALIVE = Path("/tmp/demo-pipeline.alive")  # noqa: S108 - inside its own container


def main() -> None:
    interval = float(os.environ.get(INTERVAL_ENV, "30"))
    stop = threading.Event()
    # Stop between two pipeline runs on `docker compose stop`; a SIGTERM during a run is
    # recorded as CRASHED by odibi-observe's own handler first.
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    oo.configure(strict=True)
    while not stop.is_set():
        run_pipeline()
        oo.flush(timeout=30)
        ALIVE.touch()
        stop.wait(interval)
    oo.shutdown()


if __name__ == "__main__":
    main()
