-- The catalog database and its owner. Run by deploy/postgres/initdb.d/10-odibi-roles.sh with
-- psql variables: database, owner, owner_password. (This directory is not executed by the
-- image's entrypoint itself: it only runs the files directly in /docker-entrypoint-initdb.d.)

CREATE ROLE :"owner" LOGIN PASSWORD :'owner_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE;

CREATE DATABASE :"database" OWNER :"owner";
