-- Grafana's read-only role on the catalog. Run connected to the catalog database, with psql
-- variables: owner (the role that creates the catalog tables), reader, reader_password.
--
-- SELECT on what exists now and, through default privileges, on every table the owner
-- creates later: the tables appear when `odibi-observe catalog upgrade` first runs, after
-- this script. Nothing else: no INSERT/UPDATE/DELETE, no CREATE, and every transaction is
-- read-only, so even an edited panel query cannot change the catalog.

CREATE ROLE :"reader" LOGIN PASSWORD :'reader_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;

-- Read-only transactions; a runaway panel query is cancelled instead of holding a backend;
-- and a lock the dashboards wait for must not stall them for long.
ALTER ROLE :"reader" SET default_transaction_read_only = on;
ALTER ROLE :"reader" SET statement_timeout = '15s';
ALTER ROLE :"reader" SET lock_timeout = '2s';
-- Enough for the overview's per-node quantiles to sort in memory (a day of 10 million runs
-- in 60 days is ~170 000 rows); Grafana opens at most 5 connections (maxOpenConns).
ALTER ROLE :"reader" SET work_mem = '32MB';

SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'reader') \gexec
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";

-- PostgreSQL 15 no longer lets PUBLIC create in schema public; say so for older servers too.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
