#!/usr/bin/env bash
# `odibi-observe demo` on embedded defaults (SQLite catalog, OTLP-JSON trace file, Prometheus
# text): creates .venv in the checkout, installs odibi-observe there — the package alone, no
# extras and no development tools (the demo needs no service and no database server) — and
# runs the demo in the current directory. Touches nothing outside .venv and the demo's
# output directory. Extra arguments go to the demo (scripts/demo.sh --out /tmp/demo).
set -euo pipefail
source "$(dirname "$0")/_env.sh"
started=$SECONDS

python="$(pick_python)"
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
    apt_install python3-venv
  fi
  say "[1/3] creating virtualenv $VENV ($("$python" --version))"
  "$python" -m venv "$VENV"
else
  say "[1/3] using virtualenv $VENV"
fi

# Reinstalled when pyproject.toml changes; a virtualenv that scripts/test.sh set up (with
# every extra) already has the package.
stamp="$VENV/.odibi-observe-installed"
hash="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ "$(cut -d' ' -f2 "$stamp" 2>/dev/null)" != "$hash" ]; then
  say "[2/3] installing odibi-observe and its dependencies into $VENV (about 75 MB)"
  # pip's own lines, one per package, as progress (its bars need a terminal of their own).
  log="$VENV/pip-install.log"
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -e "$ROOT" 2>&1 \
      | tee "$log" \
      | awk '/^(Collecting|Installing collected|Successfully installed)/ {
               sub(/^Collecting /, "  collecting "); print; fflush() }' >&2; then
    say "installing odibi-observe failed; the end of pip's log ($log):"
    tail -n 25 "$log" >&2
    exit 1
  fi
  echo "demo $hash" > "$stamp"
else
  say "[2/3] odibi-observe is installed in $VENV"
fi

say "[3/3] running the demo ($((SECONDS - started)) s so far)"
status=0
"$VENV/bin/odibi-observe" demo "$@" || status=$?
activate="$(realpath --relative-to=. "$VENV")/bin/activate"
printf '\n(to type odibi-observe without its path, activate the virtualenv: source %s)\n' \
  "$activate" >&2
exit "$status"
