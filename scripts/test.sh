#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with Python 3.11: creates .venv, installs
# odibi-observe with its dev extras, installs/starts PostgreSQL, installs Prometheus (for the
# dashboard and alert-rule tests) and Chromium (the status page in a real browser), then runs
# pytest.
# Extra arguments go to pytest (scripts/test.sh -k catalog -x). The suite runs in parallel, one
# test file per worker at a time (most tests wait on real processes, servers and sockets, so
# even two cores nearly halve it): as many workers as cores, at least 2 and at most 4 (each
# holds PostgreSQL connections and spawns pipelines). ODIBI_OBSERVE_TEST_WORKERS sets the
# number; 0 runs everything in this one process.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
# Checked before anything is installed, so a mistyped number fails at once.
workers="${ODIBI_OBSERVE_TEST_WORKERS:-$(cores="$(nproc)"; echo $((cores < 2 ? 2 : cores > 4 ? 4 : cores)))}"
if ! [[ "$workers" =~ ^[0-9]+$ ]]; then
  say "ODIBI_OBSERVE_TEST_WORKERS must be a whole number of workers (0: one process), not '$workers'"
  exit 2
fi
parallel=()
if [ "$workers" != 0 ]; then
  parallel=(-n "$workers" --dist loadfile)
fi
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
say "running the test suite (workers: $workers)"
status=0
"$VENV/bin/python" -m pytest "${parallel[@]}" "$@" || status=$?
exit "$status"
