#!/bin/sh
# Container entrypoint for the ingress, used with both the Debian nginx 1.22 image and the
# official nginx image (whose /etc/nginx/templates feature the Debian package lacks).
# It renders templates/*.template for one domain into /run/nginx/sites, writes the
# Prometheus basic-auth file with a freshly salted SHA-512 crypt hash, then runs "$@".
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
API_MAX_BODY_SIZE=${API_MAX_BODY_SIZE:-10m}
API_RATE_LIMIT=${API_RATE_LIMIT:-20r/s}
API_RATE_BURST=${API_RATE_BURST:-40}
API_STREAM_TIMEOUT=${API_STREAM_TIMEOUT:-600s}
PROMETHEUS_BASIC_AUTH_USER=${PROMETHEUS_BASIC_AUTH_USER:-prometheus}
PROMETHEUS_BASIC_AUTH_PASSWORD=${PROMETHEUS_BASIC_AUTH_PASSWORD:-}

label='[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?'
require PR_DOMAIN "$PR_DOMAIN" "$label(\\.$label)+" "example.com"
require NGINX_RESOLVER "$NGINX_RESOLVER" '[A-Za-z0-9.:_-]+( [A-Za-z0-9.:_-]+)*' "127.0.0.11"
require API_UPSTREAM "$API_UPSTREAM" '[A-Za-z0-9._-]+:[0-9]{1,5}' "api:8000"
require GRAFANA_UPSTREAM "$GRAFANA_UPSTREAM" '[A-Za-z0-9._-]+:[0-9]{1,5}' "grafana:3000"
require PROMETHEUS_UPSTREAM "$PROMETHEUS_UPSTREAM" '[A-Za-z0-9._-]+:[0-9]{1,5}' "prometheus:9090"
require API_MAX_BODY_SIZE "$API_MAX_BODY_SIZE" '[0-9]+[kKmMgG]?' "10m"
require API_RATE_LIMIT "$API_RATE_LIMIT" '[0-9]+r/[sm]' "20r/s"
require API_RATE_BURST "$API_RATE_BURST" '[0-9]+' "40"
require API_STREAM_TIMEOUT "$API_STREAM_TIMEOUT" '[0-9]+(ms|s|m|h)?' "600s"
require PROMETHEUS_BASIC_AUTH_USER "$PROMETHEUS_BASIC_AUTH_USER" '[A-Za-z0-9._-]{1,64}' "prometheus"

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

exec "$@"
