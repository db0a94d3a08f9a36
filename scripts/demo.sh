#!/usr/bin/env bash
# `odibi-observe demo` on embedded defaults (SQLite catalog, OTLP-JSON trace file, Prometheus
# text), after creating .venv and installing odibi-observe. No services needed.
# Extra arguments go to the demo (scripts/demo.sh --out /tmp/demo).
set -euo pipefail
source "$(dirname "$0")/_env.sh"
ensure_venv dev
cd "$ROOT"
exec "$VENV/bin/odibi-observe" demo "$@"
