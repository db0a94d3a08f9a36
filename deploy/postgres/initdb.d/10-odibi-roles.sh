#!/bin/sh
# Runs once, when the PostgreSQL container initialises an empty data directory
# (/docker-entrypoint-initdb.d). Creates the catalog database and its two roles:
#
#   ODIBI_CATALOG_USER (default odibi)         owns the catalog; pipelines, the sidecar and
#                                              `odibi-observe catalog upgrade` connect as it.
#   ODIBI_GRAFANA_DB_USER (default odibi_grafana)  Grafana's role: SELECT only, read-only
#                                              transactions, bounded statement time.
#
# Passwords come from the environment and have no defaults: the script stops if one is unset.
set -eu

: "${ODIBI_CATALOG_PASSWORD:?set ODIBI_CATALOG_PASSWORD (the catalog owner's password)}"
: "${ODIBI_GRAFANA_DB_PASSWORD:?set ODIBI_GRAFANA_DB_PASSWORD (Grafana's read-only password)}"
CATALOG_DB="${ODIBI_CATALOG_DB_NAME:-odibi}"
CATALOG_USER="${ODIBI_CATALOG_USER:-odibi}"
GRAFANA_USER="${ODIBI_GRAFANA_DB_USER:-odibi_grafana}"
SQL_DIR="$(dirname "$0")/sql"

# psql variables (-v) are quoted by psql itself (:'name' and :"name"), never pasted into SQL.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v database="$CATALOG_DB" -v owner="$CATALOG_USER" -v owner_password="$ODIBI_CATALOG_PASSWORD" \
    -f "$SQL_DIR/create-catalog.sql"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$CATALOG_DB" \
    -v owner="$CATALOG_USER" -v reader="$GRAFANA_USER" -v reader_password="$ODIBI_GRAFANA_DB_PASSWORD" \
    -f "$SQL_DIR/grafana-readonly.sql"
