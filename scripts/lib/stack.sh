# shellcheck shell=bash disable=SC2034  # sourced by scripts/*: defines variables they use
# Shared helpers for scripts/up, down, status and rotate-grafana-password (sourced, not run).
# The stack is compose/docker-compose.yml with settings from compose/.env; every compose
# call goes through `dc`, which works with `docker compose` (v2) and `docker-compose` (1.29).
#
# Overrides (mostly for tests): PR_ENV_FILE (default compose/.env); COMPOSE_FILE, when set,
# replaces `-f compose/docker-compose.yml` (colon-separated list, as compose reads it).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ENV_FILE=${PR_ENV_FILE:-$ROOT/compose/.env}
ENV_EXAMPLE=$ROOT/compose/.env.example
COMPOSE_YML=$ROOT/compose/docker-compose.yml
PROFILE=observability

if [[ -t 1 ]]; then
    B=$'\e[1m' G=$'\e[32m' Y=$'\e[33m' RED=$'\e[31m' N=$'\e[0m'
else
    B='' G='' Y='' RED='' N=''
fi
say() { printf '%s==>%s %s\n' "$B" "$N" "$*"; }
ok() { printf '%s  ok%s %s\n' "$G" "$N" "$*"; }
warn() { printf '%s%s: warning:%s %s\n' "$Y" "$PROG" "$N" "$*" >&2; }
die() { printf '%s%s: error:%s %s\n' "$RED" "$PROG" "$N" "$*" >&2; exit 1; }

need_docker() {
    command -v docker >/dev/null 2>&1 || die "docker is not installed (Docker Engine 20.10 or newer: https://docs.docker.com/engine/install/)"
    docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine: is it running, and may $(id -un) use it (docker group)?"
    if docker compose version >/dev/null 2>&1; then
        DC=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        DC=(docker-compose)
    else
        die "neither 'docker compose' (v2 plugin) nor 'docker-compose' is installed"
    fi
}

dc() {
    if [[ -n "${COMPOSE_FILE:-}" ]]; then
        "${DC[@]}" --env-file "$ENV_FILE" --profile "$PROFILE" "$@"
    else
        "${DC[@]}" --env-file "$ENV_FILE" -f "$COMPOSE_YML" --profile "$PROFILE" "$@"
    fi
}

# Value of KEY in the env file (last assignment wins; surrounding quotes removed).
env_get() {
    [[ -f "$ENV_FILE" ]] || return 0
    sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1 | sed -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'\$/\1/" -e 's/\r$//'
}

# Set KEY=VALUE in the env file (VALUE must not contain '|', '&' or a newline).
env_set() {
    if grep -q "^$1=" "$ENV_FILE"; then
        sed -i.bak "s|^$1=.*|$1=$2|" "$ENV_FILE" && rm -f "$ENV_FILE.bak"
    else
        printf '%s=%s\n' "$1" "$2" >>"$ENV_FILE"
    fi
}

# API_REPLICAS from the env file (default 1), checked: how many API replicas to run.
api_replicas() {
    local n
    n=$(env_get API_REPLICAS)
    n=${n:-1}
    [[ "$n" =~ ^[1-9][0-9]?$ ]] || die "API_REPLICAS='$n' in $ENV_FILE is not a number from 1 to 99"
    printf '%s' "$n"
}

# Container id of a service, empty when it has none.
service_container() { dc ps -q "$1" 2>/dev/null | head -n 1; }

# healthy | unhealthy | starting | running (no healthcheck) | exited | ... | absent
service_state() { container_state "$(service_container "$1")"; }
container_state() {
    local id=$1
    [[ -n "$id" ]] || { echo absent; return; }
    docker inspect -f '{{if eq .State.Status "running"}}{{if .State.Health}}{{.State.Health.Status}}{{else}}running{{end}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo absent
}

# https://host[:port] for one of the three virtual hosts.
public_url() {
    local port
    port=$(env_get NGINX_HTTPS_PORT)
    if [[ -z "$port" || "$port" == 443 ]]; then
        printf 'https://%s.%s/' "$1" "$(env_get PR_DOMAIN)"
    else
        printf 'https://%s.%s:%s/' "$1" "$(env_get PR_DOMAIN)" "$port"
    fi
}

# Absolute path of a path from the env file that compose resolves relative to compose/.
compose_path() {
    case "$1" in
    /*) printf '%s' "$1" ;;
    *) printf '%s/compose/%s' "$ROOT" "$1" ;;
    esac
}

# Create a directory if needed and print its absolute, normalised path.
abs_dir() {
    mkdir -p "$1" && (cd "$1" && pwd)
}
