#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with Python 3.11: creates .venv, installs
# odibi-observe with its dev extras, installs/starts PostgreSQL, installs Prometheus (for the
# dashboard and alert-rule tests) and Chromium (the status page in a real browser), then runs
# pytest.
# Extra arguments go to pytest (scripts/test.sh -k catalog -x).
set -euo pipefail
source "$(dirname "$0")/_env.sh"
# Leave the machine as it was found: the PostgreSQL role this run created is dropped and a
# cluster it started is stopped, however the tests end (failure, Ctrl-C, TERM).
trap release_postgres EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
ensure_venv dev
ensure_postgres
ensure_prometheus
ensure_chromium
cd "$ROOT"
say "running the test suite"
status=0
"$VENV/bin/python" -m pytest "$@" || status=$?
exit "$status"
