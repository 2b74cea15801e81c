#!/bin/sh
# Prometheus entrypoint (official prom/prometheus image and the Debian-based offline one).
# Prometheus 2.x cannot read secrets from the environment, so the bearer tokens given to the
# container as PR_METRICS_TOKEN and LITELLM_MASTER_KEY are written to files on the
# /run/pr-secrets tmpfs that prometheus.yml points at; then Prometheus replaces this shell.
set -eu

dir=${PR_SECRETS_DIR:-/run/pr-secrets}
umask 077
mkdir -p "$dir"
printf '%s' "${PR_METRICS_TOKEN:-}" >"$dir/api-metrics-token"
printf '%s' "${LITELLM_MASTER_KEY:-}" >"$dir/litellm-master-key"
[ -n "${PR_METRICS_TOKEN:-}" ] ||
    echo "prometheus entrypoint: warning: PR_METRICS_TOKEN is empty; the API scrape sends no token" >&2
unset PR_METRICS_TOKEN LITELLM_MASTER_KEY

if [ "${1:-}" = "" ] || [ "${1#-}" != "$1" ]; then
    set -- /bin/prometheus "$@"
fi
exec "$@"
