#!/bin/sh
# Entrypoint of privaterouter/alertmanager: with no arguments or arguments that start with
# '-' (flags, as in the official image's CMD and in compose `command:` lists) it runs
# /bin/alertmanager with them; any other command runs as given, e.g.
#   docker run --rm IMAGE /bin/amtool check-config /etc/alertmanager/alertmanager.yml
set -eu
case "${1:-}" in
"" | -*) exec /bin/alertmanager "$@" ;;
*) exec "$@" ;;
esac
