# Shared setup for scripts/demo.sh and scripts/test.sh: a virtualenv with the project
# installed, and (for the tests) a running PostgreSQL with a test role. Sourced, not run.
# Everything here is idempotent: a second run reuses what the first one set up.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ODIBI_OBSERVE_VENV:-$ROOT/.venv}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    say "need root for: $*"; return 1; fi
}

apt_install() {
  say "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pick_python() {
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null; then echo "$candidate"; return; fi
  done
  apt_install python3 >/dev/null && echo python3
}

# ensure_venv EXTRAS — create $VENV and install the project with the given extras, once per
# change of pyproject.toml.
ensure_venv() {
  local extras="$1" python stamp want
  python="$(pick_python)"
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
      apt_install python3-venv
    fi
    say "creating virtualenv $VENV"
    "$python" -m venv "$VENV"
  fi
  stamp="$VENV/.odibi-observe-installed"
  want="$extras $(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing odibi-observe[$extras] into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[$extras]"
    echo "$want" > "$stamp"
  fi
}

# ensure_postgres — start the machine's PostgreSQL cluster (installing it if missing), create
# the test role with a fresh random password, and export ODIBI_OBSERVE_TEST_PG_URL. Without
# the rights to do so it says why and returns: the PostgreSQL tests then skip (or, with
# CI=true, fail, because CI must run them).
ensure_postgres() {
  _ensure_postgres || say "PostgreSQL could not be set up here: its tests will skip (fail if CI=true)"
}

_ensure_postgres() {
  if [ -n "${ODIBI_OBSERVE_TEST_PG_URL:-}" ]; then return 0; fi
  if ! command -v pg_lsclusters >/dev/null; then
    apt_install postgresql || return 1
  fi
  local line version name port status
  line="$(pg_lsclusters -h 2>/dev/null | head -n 1)"
  if [ -z "$line" ]; then
    version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
    say "creating PostgreSQL $version cluster"
    as_root pg_createcluster "$version" main >/dev/null || return 1
    line="$(pg_lsclusters -h | head -n 1)"
  fi
  read -r version name port status _ <<<"$line"
  if [ "$status" != "online" ]; then
    say "starting PostgreSQL $version/$name on port $port"
    as_root pg_ctlcluster "$version" "$name" start || return 1
  fi
  local password
  password="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
  as_root runuser -u postgres -- psql -q -p "$port" -v ON_ERROR_STOP=1 >/dev/null <<SQL || return 1
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'odibi_observe_test') THEN
    CREATE ROLE odibi_observe_test LOGIN CREATEDB;
  END IF;
END \$\$;
ALTER ROLE odibi_observe_test PASSWORD '$password';
SELECT 'CREATE DATABASE odibi_observe_test OWNER odibi_observe_test'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'odibi_observe_test') \gexec
SQL
  export ODIBI_OBSERVE_TEST_PG_URL="postgresql+psycopg://odibi_observe_test:$password@127.0.0.1:$port/odibi_observe_test"
  export ODIBI_OBSERVE_TEST_PG_CLUSTER="$version $name"
}

# ensure_prometheus — the real Prometheus server and promtool (Debian package `prometheus`),
# which the dashboard and alert-rule tests start on a free loopback port. The package's own
# service is stopped and disabled: the tests run their own server with a temporary config.
ensure_prometheus() {
  if command -v prometheus >/dev/null && command -v promtool >/dev/null; then return 0; fi
  if ! apt_install prometheus; then
    say "Prometheus could not be installed here: its tests will skip (fail if CI=true)"
    return 0
  fi
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
}
