#!/usr/bin/env bash
# Entrypoint of privaterouter/postgres:15 (Debian postgresql-15), compatible with the
# environment of the official `postgres` image:
#   POSTGRES_PASSWORD        superuser password; REQUIRED to initialise a new cluster
#                            (unless POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_USER            superuser name (default postgres)
#   POSTGRES_DB              database created on first start (default: $POSTGRES_USER)
#   POSTGRES_INITDB_ARGS     extra initdb arguments
#   POSTGRES_HOST_AUTH_METHOD  pg_hba method for host connections (default scram-sha-256)
#   PGDATA                   data directory (default /var/lib/postgresql/data)
#   VAR_FILE                 for POSTGRES_PASSWORD/USER/DB/INITDB_ARGS: read VAR from a file
#   /docker-entrypoint-initdb.d/*.sh, *.sql, *.sql.gz run once after initdb.
# On first start it runs initdb, then a temporary server that listens on the Unix
# socket only and whose log goes to /tmp/postgres-init.log, so the line
# "database system is ready to accept connections" appears exactly once in the
# container's output (on stderr), printed by the final server. The final server
# is exec'ed in the foreground as the postgres user: SIGINT/SIGTERM stop it cleanly.
set -Eeuo pipefail

say() { printf 'docker-entrypoint: %s\n' "$*"; }
die() { printf 'docker-entrypoint: error: %s\n' "$*" >&2; exit 1; }

# file_env VAR [DEFAULT]: take VAR from the environment or from the file named by VAR_FILE.
file_env() {
    local var=$1 fvar="${1}_FILE" def=${2:-}
    local val=${!var:-} fval=${!fvar:-}
    if [[ -n "$val" && -n "$fval" ]]; then
        die "both $var and $fvar are set (they are exclusive)"
    fi
    if [[ -n "$fval" ]]; then
        val=$(<"$fval")
    elif [[ -z "$val" ]]; then
        val=$def
    fi
    export "$var"="$val"
    unset "$fvar"
}

export PGDATA=${PGDATA:-/var/lib/postgresql/data}

# `docker run IMAGE -c shared_buffers=256MB` means `postgres -c ...`.
if [[ "${1:-}" == -* ]]; then
    set -- postgres "$@"
fi
# Any other command (psql, pg_isready, bash, ...) runs as given.
if [[ "${1:-}" != postgres ]]; then
    exec "$@"
fi

# As root: prepare the directories, then run this script again as postgres.
if [[ "$(id -u)" == 0 ]]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 700 "$PGDATA"
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql
    HOME=$(getent passwd postgres | cut -d: -f6)
    export HOME
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

if [[ -s "$PGDATA/PG_VERSION" ]]; then
    say "PostgreSQL database directory $PGDATA already contains a database; skipping initialisation"
else
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    file_env POSTGRES_INITDB_ARGS
    : "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"

    if [[ -z "$POSTGRES_PASSWORD" && "$POSTGRES_HOST_AUTH_METHOD" != trust ]]; then
        cat >&2 <<'EOM'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all
       connections without a password. This is *not* recommended.
EOM
        exit 1
    fi

    say "initialising a new cluster in $PGDATA (superuser $POSTGRES_USER, host auth $POSTGRES_HOST_AUTH_METHOD)"
    initdb_args=(--username="$POSTGRES_USER" --auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD")
    pwfile=""
    if [[ -n "$POSTGRES_PASSWORD" ]]; then
        pwfile=$(mktemp) # mode 600, owned by postgres
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
        initdb_args+=(--pwfile="$pwfile")
    fi
    # POSTGRES_INITDB_ARGS is word-split with shell quoting, as in the official image.
    eval 'initdb "${initdb_args[@]}" '"$POSTGRES_INITDB_ARGS"
    [[ -z "$pwfile" ]] || rm -f "$pwfile"

    sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "$PGDATA/postgresql.conf"
    {
        echo
        echo "# Added by docker-entrypoint.sh: connections from any host, $POSTGRES_HOST_AUTH_METHOD."
        echo "host all all all $POSTGRES_HOST_AUTH_METHOD"
    } >>"$PGDATA/pg_hba.conf"

    # Temporary server: Unix socket only, its log kept out of the container's output.
    init_log=/tmp/postgres-init.log
    if ! pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -l "$init_log" -w -t 120 start >/dev/null; then
        cat "$init_log" >&2
        die "the temporary server for initialisation did not start"
    fi

    export PGPASSWORD=$POSTGRES_PASSWORD
    psql_base=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
    exists=$("${psql_base[@]}" --dbname postgres -tA --set db="$POSTGRES_DB" <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")
    if [[ "$exists" != 1 ]]; then
        "${psql_base[@]}" --dbname postgres -q --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
        say "created database $POSTGRES_DB"
    fi

    psql=("${psql_base[@]}" --dbname "$POSTGRES_DB")
    shopt -s nullglob
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
        *.sh)
            # shellcheck disable=SC1090
            if [[ -x "$f" ]]; then say "running $f"; "$f"; else say "sourcing $f"; . "$f"; fi ;;
        *.sql) say "running $f"; "${psql[@]}" -f "$f" ;;
        *.sql.gz) say "running $f"; gunzip -c "$f" | "${psql[@]}" ;;
        *) say "ignoring $f" ;;
        esac
    done
    shopt -u nullglob
    unset PGPASSWORD

    if ! pg_ctl -D "$PGDATA" -m fast -w -t 120 stop >/dev/null; then
        cat "$init_log" >&2
        die "the temporary server for initialisation did not stop"
    fi
    say "PostgreSQL init process complete; starting the server"
fi

exec "$@"
