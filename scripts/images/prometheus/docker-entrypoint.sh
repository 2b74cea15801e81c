#!/bin/sh
# Entrypoint of privaterouter/prometheus: with no arguments or arguments that start with
# '-' (flags, as in the official image's CMD and in compose `command:` lists) it runs
# /bin/prometheus with them; any other command runs as given, e.g.
#   docker run --rm IMAGE /bin/promtool check config /etc/prometheus/prometheus.yml
set -eu
case "${1:-}" in
"" | -*) exec /bin/prometheus "$@" ;;
*) exec "$@" ;;
esac
