#!/bin/sh
# Grafana entrypoint wrapper: refuses to start with an admin password that is missing, a
# well-known default, or shorter than 12 characters, then hands over to the image's own
# /run.sh. Compose already refuses an unset GRAFANA_ADMIN_PASSWORD; this catches "admin".
# The password only seeds a new database: to change it later use scripts/rotate-grafana-password.
set -eu

pw=${GF_SECURITY_ADMIN_PASSWORD:-}
lower=$(printf '%s' "$pw" | tr '[:upper:]' '[:lower:]')
fail() {
    echo "grafana: refusing to start: $1." >&2
    echo "grafana: set GRAFANA_ADMIN_PASSWORD in compose/.env to a long random value (scripts/up generates one)." >&2
    exit 1
}
case "$lower" in
    "") fail "GF_SECURITY_ADMIN_PASSWORD is empty" ;;
    admin | password | changeme | grafana | prom-operator) fail "the admin password is a well-known default" ;;
esac
[ "${#pw}" -ge 12 ] || fail "the admin password is shorter than 12 characters"

exec /run.sh "$@"
