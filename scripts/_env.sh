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
# a test role of our own with a random password, and export ODIBI_OBSERVE_TEST_PG_URL. Without
# the rights to do so it says why and returns: the PostgreSQL tests then skip (or, with
# CI=true, fail, because CI must run them). What it changed is undone by release_postgres:
# the cluster is stopped only if it was started here, and only a role created here (marked by
# its COMMENT) has its password set or is dropped; a role someone else made is never touched.
PG_ROLE_MARK="created by odibi-observe scripts/test.sh"
ensure_postgres() {
  _ensure_postgres || say "PostgreSQL could not be set up here: its tests will skip (fail if CI=true)"
}

_pg_psql() { as_root runuser -u postgres -- psql -q -X -p "$PG_PORT" -v ON_ERROR_STOP=1 "$@"; }

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
  PG_PORT="$port"
  if [ "$status" != "online" ]; then
    say "starting PostgreSQL $version/$name on port $port (stopped again when the tests end)"
    as_root pg_ctlcluster "$version" "$name" start || return 1
    PG_STARTED_CLUSTER="$version $name"
  fi
  # Our role: odibi_observe_test if it is free or ours (a run that was interrupted), else a
  # name of our own; a role without our mark belongs to someone else and is left alone.
  local role="" candidate owner
  for candidate in odibi_observe_test "odibi_observe_test_$$"; do
    owner="$(_pg_psql -tA -c "SELECT coalesce(shobj_description(oid, 'pg_authid'), '-') FROM pg_roles WHERE rolname = '$candidate'")" || return 1
    if [ -z "$owner" ] || [ "$owner" = "$PG_ROLE_MARK" ]; then role="$candidate"; break; fi
    say "PostgreSQL role $candidate exists and is not ours: leaving it (and its password) alone"
  done
  [ -n "$role" ] || return 1
  local password
  password="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
  _pg_psql >/dev/null <<SQL || return 1
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN
    CREATE ROLE $role LOGIN CREATEDB;
  END IF;
END \$\$;
COMMENT ON ROLE $role IS '$PG_ROLE_MARK';
ALTER ROLE $role PASSWORD '$password';
SELECT 'CREATE DATABASE $role OWNER $role'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$role') \gexec
SQL
  PG_CREATED_ROLE="$role"
  export ODIBI_OBSERVE_TEST_PG_URL="postgresql+psycopg://$role:$password@127.0.0.1:$port/$role"
  export ODIBI_OBSERVE_TEST_PG_CLUSTER="$version $name"
}

# release_postgres — undo what ensure_postgres did: drop the role it created (and the
# databases that role owns), stop the cluster if it started it. Safe to call when it did nothing.
release_postgres() {
  if [ -n "${PG_CREATED_ROLE:-}" ]; then
    local db
    for db in $(_pg_psql -tA -c "SELECT datname FROM pg_database WHERE pg_get_userbyid(datdba) = '$PG_CREATED_ROLE'" 2>/dev/null); do
      _pg_psql -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
    _pg_psql -c "DROP ROLE IF EXISTS $PG_CREATED_ROLE" >/dev/null 2>&1 \
      || say "could not drop PostgreSQL role $PG_CREATED_ROLE"
    PG_CREATED_ROLE=""
  fi
  if [ -n "${PG_STARTED_CLUSTER:-}" ]; then
    say "stopping PostgreSQL $PG_STARTED_CLUSTER (it was not running before the tests)"
    # shellcheck disable=SC2086 # "version name": two arguments
    as_root pg_ctlcluster $PG_STARTED_CLUSTER stop || say "could not stop PostgreSQL $PG_STARTED_CLUSTER"
    PG_STARTED_CLUSTER=""
  fi
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

# ensure_chromium — headless Chromium (Debian package `chromium`), which the status-page tests
# use to render the page at 1400 and 800 px and measure that nothing overflows.
ensure_chromium() {
  if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then return 0; fi
  if ! apt_install chromium; then
    say "Chromium could not be installed here: the browser checks will skip (fail if CI=true)"
  fi
}
