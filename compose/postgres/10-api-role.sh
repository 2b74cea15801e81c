#!/bin/sh
# The API's own database role: LOGIN, no superuser, owner of its database (and so of the
# public schema) and of every table in it. Mounted into /docker-entrypoint-initdb.d, where
# the postgres entrypoint (the official image's and privaterouter/postgres's alike) runs it
# once on a new volume, as the superuser over the Unix socket. scripts/up runs it again on
# every start (`exec postgres sh /docker-entrypoint-initdb.d/10-api-role.sh`): it is
# idempotent, sets the password from compose/.env (so a new API_DB_PASSWORD takes effect)
# and hands the API's tables over from the superuser on a volume that an earlier version
# created (the API used to connect as the superuser).
#
# Environment (the postgres container's): POSTGRES_USER, POSTGRES_DB (superuser and
# database, as the entrypoint knows them), API_DB_USER, API_DB_PASSWORD.
# Written for sh and for being sourced by bash (an entrypoint sources a script that is not
# executable): no `set` that would change the entrypoint's options; `exit` only on failure,
# which is then the entrypoint's too, as it must be.

if [ -z "${API_DB_PASSWORD:-}" ]; then
    echo "10-api-role.sh: API_DB_PASSWORD is empty (scripts/up generates it into compose/.env)" >&2
    exit 1
fi

psql -v ON_ERROR_STOP=1 --no-psqlrc -q \
    --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" \
    --set role="${API_DB_USER:-privaterouter_api}" \
    --set db="${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" <<'SQL'
-- The password is read from the environment, not passed as an argument (which any process in
-- the container could read in /proc), and the statement that carries it is never logged, not
-- even when it fails.
SET log_statement = 'none';
SET log_min_error_statement = 'panic';
\getenv pw API_DB_PASSWORD
SELECT format('CREATE ROLE %I', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'pw';
-- Owner of the database: on PostgreSQL 15 that makes it owner of the public schema
-- (pg_database_owner), so its migrations can create tables there.
ALTER DATABASE :"db" OWNER TO :"role";
-- Tables, views and free-standing sequences not yet its own (an existing volume). A
-- sequence that belongs to a column follows its table.
SELECT format('ALTER %s %s OWNER TO %I',
              CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                             WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
              c.oid::regclass, :'role')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
   AND pg_get_userbyid(c.relowner) <> :'role'
   AND NOT (c.relkind = 'S' AND EXISTS (
        SELECT 1 FROM pg_depend d
         WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i'))) \gexec
SQL
[ $? -eq 0 ] || exit 1
echo "10-api-role.sh: role ${API_DB_USER:-privaterouter_api} (no superuser) owns database ${POSTGRES_DB:-${POSTGRES_USER:-postgres}}"
