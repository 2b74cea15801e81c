#!/bin/sh
# Entrypoint of privaterouter/nginx:1.22. Like the official nginx image:
#  - `docker run IMAGE -t` means `nginx -t` (arguments starting with '-' go to nginx);
#  - before starting nginx, executable *.sh files in /docker-entrypoint.d/ run in order
#    (none are shipped; mount your own, e.g. to render config templates);
#  - any other command (nginx -V, htpasswd, sh) runs as given.
# nginx itself runs in the foreground (CMD: nginx -g 'daemon off;'); logs go to
# stdout/stderr through /var/log/nginx/{access,error}.log -> /dev/std{out,err}.
set -eu

case "${1:-}" in
-*) set -- nginx "$@" ;;
esac

if [ "${1:-}" = nginx ] && [ -d /docker-entrypoint.d ]; then
    for f in /docker-entrypoint.d/*.sh; do
        [ -f "$f" ] || continue
        if [ -x "$f" ]; then
            echo "docker-entrypoint: running $f"
            "$f"
        else
            echo "docker-entrypoint: ignoring $f (not executable)"
        fi
    done
fi

exec "$@"
