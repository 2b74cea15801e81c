#!/bin/sh
# Redis entrypoint (official redis image and the Debian-based offline one). The password comes
# from the environment (REDIS_PASSWORD) and goes into a config file on the /run/redis tmpfs,
# readable by redis only, so it never appears on redis-server's command line (docker inspect,
# ps). Persistence is off: Redis holds rate-limit counters that expire within a minute and
# carries revocation messages; nothing in it must survive a restart (docs/operations.md).
set -eu

die() { echo "redis entrypoint: $*" >&2; exit 1; }

: "${REDIS_PASSWORD:?REDIS_PASSWORD must be set (scripts/up generates one into compose/.env)}"
# It is also in the API's PR_REDIS_URL and in redis.conf: letters and digits only (scripts/up
# generates hex), so neither needs escaping.
printf '%s' "$REDIS_PASSWORD" | grep -Eqx '[A-Za-z0-9]{16,}' ||
    die "REDIS_PASSWORD must be at least 16 letters or digits (scripts/up generates one)"
REDIS_MAXMEMORY=${REDIS_MAXMEMORY:-64mb}
printf '%s' "$REDIS_MAXMEMORY" | grep -Eqx '[0-9]+(kb|mb|gb)?' || die "REDIS_MAXMEMORY='$REDIS_MAXMEMORY' is not like 64mb"

dir=${REDIS_RUN_DIR:-/run/redis}
conf=$dir/redis.conf
umask 077
mkdir -p "$dir"
cat >"$conf" <<CONF
bind 0.0.0.0
port 6379
protected-mode yes
requirepass $REDIS_PASSWORD
# No RDB snapshots and no append-only file: nothing to persist (see above).
save ""
appendonly no
dir $dir
daemonize no
logfile ""
# Counters all carry a TTL; if memory runs out, the ones closest to expiry go first.
maxmemory $REDIS_MAXMEMORY
maxmemory-policy volatile-ttl
CONF
unset REDIS_PASSWORD
exec redis-server "$conf"
