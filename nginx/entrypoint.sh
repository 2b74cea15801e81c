#!/bin/sh
# Container entrypoint for the ingress, used with both the Debian nginx 1.22 image and the
# official nginx image (whose /etc/nginx/templates feature the Debian package lacks).
# It renders templates/*.template for one domain into /run/nginx/sites, writes the
# Prometheus basic-auth file with a freshly salted SHA-512 crypt hash, writes the upstream
# server lists (below), then runs "$@".
#
# Upstreams: the templates name `upstream` blocks (so connections to the API are kept alive;
# a proxy_pass through a variable opens one per request) whose servers are the addresses the
# service names have now, resolved here, in /run/nginx/upstreams/<name>.conf. A name that does
# not resolve (its container is down) gets a placeholder marked down, so nginx still starts
# and answers 502 for that host. While nginx runs, a loop re-resolves every
# UPSTREAM_RESOLVE_INTERVAL seconds and reloads nginx when a set of addresses changes: replicas
# that join or leave (`--scale api=N`) are followed. nginx 1.27.3+ could do this itself
# (`server ... resolve`); this works the same on Debian's 1.22 and on the official image.
set -eu

die() { echo "nginx entrypoint: $*" >&2; exit 1; }
warn() { echo "nginx entrypoint: warning: $*" >&2; }

# Every value ends up inside nginx syntax: accept only the characters it needs.
require() { # name value extended-regex example
    printf '%s' "$2" | grep -Eqx -- "$3" || die "$1='$2' is not valid (expected something like $4)"
}

: "${PR_DOMAIN:?PR_DOMAIN must be set to the domain the three hosts live under, e.g. example.com}"
NGINX_RESOLVER=${NGINX_RESOLVER:-127.0.0.11}
API_UPSTREAM=${API_UPSTREAM:-api:8000}
GRAFANA_UPSTREAM=${GRAFANA_UPSTREAM:-grafana:3000}
PROMETHEUS_UPSTREAM=${PROMETHEUS_UPSTREAM:-prometheus:9090}
API_MAX_BODY_SIZE=${API_MAX_BODY_SIZE:-1m}
API_RATE_LIMIT=${API_RATE_LIMIT:-20r/s}
API_RATE_BURST=${API_RATE_BURST:-40}
API_STREAM_TIMEOUT=${API_STREAM_TIMEOUT:-600s}
CONN_LIMIT_PER_IP=${CONN_LIMIT_PER_IP:-64}
PROMETHEUS_BASIC_AUTH_USER=${PROMETHEUS_BASIC_AUTH_USER:-prometheus}
PROMETHEUS_BASIC_AUTH_PASSWORD=${PROMETHEUS_BASIC_AUTH_PASSWORD:-}
UPSTREAM_RESOLVE_INTERVAL=${UPSTREAM_RESOLVE_INTERVAL:-5}

label='[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?'
require PR_DOMAIN "$PR_DOMAIN" "$label(\\.$label)+" "example.com"
require NGINX_RESOLVER "$NGINX_RESOLVER" '[A-Za-z0-9.:_-]+( [A-Za-z0-9.:_-]+)*' "127.0.0.11"
require API_UPSTREAM "$API_UPSTREAM" '[A-Za-z0-9._-]+:[0-9]{1,5}' "api:8000"
require GRAFANA_UPSTREAM "$GRAFANA_UPSTREAM" '[A-Za-z0-9._-]+:[0-9]{1,5}' "grafana:3000"
require PROMETHEUS_UPSTREAM "$PROMETHEUS_UPSTREAM" '[A-Za-z0-9._-]+:[0-9]{1,5}' "prometheus:9090"
require API_MAX_BODY_SIZE "$API_MAX_BODY_SIZE" '[0-9]+[kKmMgG]?' "1m"
require API_RATE_LIMIT "$API_RATE_LIMIT" '[0-9]+r/[sm]' "20r/s"
require API_RATE_BURST "$API_RATE_BURST" '[0-9]+' "40"
require API_STREAM_TIMEOUT "$API_STREAM_TIMEOUT" '[0-9]+(ms|s|m|h)?' "600s"
require CONN_LIMIT_PER_IP "$CONN_LIMIT_PER_IP" '[1-9][0-9]{0,4}' "64 (1 to 65535)"
require PROMETHEUS_BASIC_AUTH_USER "$PROMETHEUS_BASIC_AUTH_USER" '[A-Za-z0-9._-]{1,64}' "prometheus"
require UPSTREAM_RESOLVE_INTERVAL "$UPSTREAM_RESOLVE_INTERVAL" '[0-9]{1,4}' "5 (seconds; 0: never re-resolve)"

templates=/etc/nginx/templates
out=/run/nginx/sites
mkdir -p "$out"
rm -f "$out"/*.conf
for tpl in "$templates"/*.template; do
    [ -e "$tpl" ] || die "no templates in $templates"
    dest="$out/$(basename "$tpl" .template)"
    sed -e "s|\${PR_DOMAIN}|$PR_DOMAIN|g" \
        -e "s|\${NGINX_RESOLVER}|$NGINX_RESOLVER|g" \
        -e "s|\${API_UPSTREAM}|$API_UPSTREAM|g" \
        -e "s|\${GRAFANA_UPSTREAM}|$GRAFANA_UPSTREAM|g" \
        -e "s|\${PROMETHEUS_UPSTREAM}|$PROMETHEUS_UPSTREAM|g" \
        -e "s|\${API_MAX_BODY_SIZE}|$API_MAX_BODY_SIZE|g" \
        -e "s|\${API_RATE_LIMIT}|$API_RATE_LIMIT|g" \
        -e "s|\${API_RATE_BURST}|$API_RATE_BURST|g" \
        -e "s|\${API_STREAM_TIMEOUT}|$API_STREAM_TIMEOUT|g" \
        -e "s|\${CONN_LIMIT_PER_IP}|$CONN_LIMIT_PER_IP|g" \
        "$tpl" >"$dest"
    # shellcheck disable=SC2016 # a literal ${NAME} left in the output
    if grep -v '^[[:space:]]*#' "$dest" | grep -n '\${[A-Za-z_]*}' >&2; then
        die "$tpl uses a placeholder this entrypoint does not know (shown above)"
    fi
done

# Basic auth for prometheus.<domain>. SHA-512 crypt ($6$) through openssl when the image has
# it, else through perl (perl-base is part of every Debian image); nginx checks it with crypt().
htpasswd=/run/nginx/prometheus.htpasswd
hash_password() {
    if command -v openssl >/dev/null 2>&1; then
        printf '%s\n' "$1" | openssl passwd -6 -stdin
    elif command -v perl >/dev/null 2>&1; then
        salt=$(tr -dc 'A-Za-z0-9./' </dev/urandom | head -c 16)
        PR_PW="$1" PR_SALT="$salt" perl -e 'print crypt($ENV{PR_PW}, "\$6\$$ENV{PR_SALT}\$"), "\n"'
    else
        return 1
    fi
}
umask 027
if [ -z "$PROMETHEUS_BASIC_AUTH_PASSWORD" ]; then
    warn "PROMETHEUS_BASIC_AUTH_PASSWORD is empty: prometheus.$PR_DOMAIN refuses every login"
    : >"$htpasswd"
else
    case "$PROMETHEUS_BASIC_AUTH_PASSWORD" in
        *"
"*) die "PROMETHEUS_BASIC_AUTH_PASSWORD must be a single line" ;;
    esac
    hash=$(hash_password "$PROMETHEUS_BASIC_AUTH_PASSWORD") || die "found neither openssl nor perl to hash the Prometheus password"
    # shellcheck disable=SC2016 # a literal $6$ prefix
    case "$hash" in
        '$6$'*) ;;
        *) die "could not hash the Prometheus password (got no SHA-512 crypt hash)" ;;
    esac
    printf '%s:%s\n' "$PROMETHEUS_BASIC_AUTH_USER" "$hash" >"$htpasswd"
fi
# Workers (www-data) read the file; nobody else needs to.
chgrp www-data "$htpasswd" 2>/dev/null || chmod 0644 "$htpasswd"
unset PROMETHEUS_BASIC_AUTH_PASSWORD

# ---------------------------------------------------------------- upstream servers
upstreams=/run/nginx/upstreams
mkdir -p "$upstreams"
# A slow DNS answer must not hold up nginx's start or the loop for long.
if command -v timeout >/dev/null 2>&1; then lookup_timeout="timeout 3"; else lookup_timeout=; fi

# The IPv4 addresses HOST has now, sorted, one a line (none when it does not resolve);
# status 124 when the lookup timed out (nothing is known then).
addresses() {
    rc=0
    # shellcheck disable=SC2086 # $lookup_timeout is a command prefix or empty
    out=$($lookup_timeout getent ahostsv4 "$1" 2>/dev/null) || rc=$?
    [ "$rc" -ne 124 ] || return 124
    printf '%s\n' "$out" | awk '$1 ~ /^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$/ { print $1 }' | sort -u
}

# Addresses being drained (scripts/rolling-restart writes them, one a line, before it stops a
# replica): their server lines are marked down, so nginx sends them nothing new while what is
# in flight finishes.
drain=/run/nginx/upstreams/drain

# The server lines of one upstream block for HOST:PORT: one per address, or a placeholder
# marked down (nginx starts, and answers 502 for that host). Status 124: the lookup timed out.
servers() {
    host=${1%:*} port=${1##*:} rc=0
    list=$(addresses "$host") || rc=$?
    if [ -z "$list" ]; then
        printf '# %s does not resolve: a placeholder, so that nginx starts (502 until it resolves)\n' "$1"
        printf 'server 127.0.0.1:%s down;\n' "$port"
        return "$rc"
    fi
    printf '# %s, resolved by entrypoint.sh\n' "$1"
    # max_fails/fail_timeout: a replica that refuses connections is skipped for 10 s.
    for a in $list; do
        if [ -f "$drain" ] && grep -qxF "$a" "$drain"; then
            printf 'server %s:%s down; # draining\n' "$a" "$port"
        else
            printf 'server %s:%s max_fails=1 fail_timeout=10s;\n' "$a" "$port"
        fi
    done
}

# name=HOST:PORT for each upstream block the templates include.
upstream_targets="api=$API_UPSTREAM grafana=$GRAFANA_UPSTREAM prometheus=$PROMETHEUS_UPSTREAM"

for t in $upstream_targets; do
    file="$upstreams/${t%%=*}.conf"
    servers "${t#*=}" >"$file" || true
    if grep -q ' down;$' "$file"; then
        warn "${t#*=} does not resolve (yet): nginx answers 502 for it until it does"
    fi
done

# Re-resolves every UPSTREAM_RESOLVE_INTERVAL seconds while nginx (this process, after exec)
# runs; rewrites the files whose address set changed and reloads nginx (graceful: requests and
# streams in flight finish on the old workers). A lookup that times out changes nothing, and a
# name loses its last address only when two lookups in a row agree, so one failed DNS answer
# never takes a service offline.
watch_upstreams() {
    nginx_pid=$1
    while sleep "$UPSTREAM_RESOLVE_INTERVAL"; do
        kill -0 "$nginx_pid" 2>/dev/null || exit 0
        changed=
        for t in $upstream_targets; do
            target=${t#*=} file="$upstreams/${t%%=*}.conf"
            new=$(servers "$target") || continue
            if [ "$new" = "$(cat "$file" 2>/dev/null)" ]; then
                rm -f "$file.gone"
                continue
            fi
            case "$new" in
            *" down;")
                if [ ! -e "$file.gone" ]; then
                    : >"$file.gone"
                    continue
                fi
                ;;
            esac
            rm -f "$file.gone"
            printf '%s\n' "$new" >"$file.new" && mv "$file.new" "$file"
            now=$(grep '^server' "$file" | grep -v ' down;' | awk '{ print $2 }' | tr '\n' ' ')
            echo "nginx entrypoint: $target now resolves to: ${now:-nothing}" >&2
            changed=1
        done
        if [ -n "$changed" ]; then
            nginx -s reload || warn "nginx -s reload failed; nginx keeps the previous upstream servers"
        fi
    done
}

# Only when this starts the server (not for nginx -t, -T, -v, -V, -s or another command).
serving=
if [ "${1:-}" = nginx ] && [ "$UPSTREAM_RESOLVE_INTERVAL" -gt 0 ]; then
    serving=1
    for arg in "$@"; do
        case "$arg" in -t | -T | -v | -V | -s | -h | -\?) serving= ;; esac
    done
fi
if [ -n "$serving" ]; then
    # $$ is this shell, which exec turns into the nginx master process.
    watch_upstreams "$$" &
fi

exec "$@"
