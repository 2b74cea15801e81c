# shellcheck shell=bash
# The image manifest (scripts/images/manifest) for the scripts (sourced, not run). It is read
# here rather than sourced so that a NAME the caller's environment already sets (an operator's
# pin, e.g. POSTGRES_IMAGE=...) is left alone.

IMAGES_MANIFEST=$(cd "$(dirname "${BASH_SOURCE[0]}")/../images" && pwd)/manifest
# Without it every reader below would see no lines and carry on (process substitutions are
# not checked by set -e): refuse at once instead.
[[ -r $IMAGES_MANIFEST ]] || { printf 'missing %s: the image manifest\n' "$IMAGES_MANIFEST" >&2; return 1; }

# Every NAME=image:tag line of the manifest, in file order (comments and blank lines dropped).
manifest_entries() {
    sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$IMAGES_MANIFEST"
}

# The image:tag of NAME; fails with a message when the manifest has no such line.
manifest_image() { # NAME
    local value
    value=$(manifest_entries | sed -n "s/^$1=//p" | tail -n 1)
    if [[ -z "$value" ]]; then
        printf 'no %s in %s\n' "$1" "$IMAGES_MANIFEST" >&2
        return 1
    fi
    printf '%s\n' "$value"
}

# The offline images' recipe names in build order (OFFLINE_DEMO_ECHO -> demo-echo).
manifest_recipes() {
    manifest_entries | sed -n 's/^OFFLINE_\([A-Z0-9_]*\)=.*/\1/p' | tr 'A-Z_' 'a-z-'
}

# The offline image of a recipe: manifest_offline demo-echo -> privaterouter/demo-echo:1.
manifest_offline() { # RECIPE
    local key
    key=OFFLINE_$(tr 'a-z-' 'A-Z_' <<<"$1")
    manifest_image "$key"
}

# Exports every pinned image (NAME_IMAGE) that neither the environment nor the env file sets
# (env_get, scripts/lib/stack.sh), so compose runs the manifest's image even if its own
# `${NAME:-default}` was edited apart; an operator's pin in either place wins.
export_manifest_pins() {
    local name value
    while read -r name; do
        [[ -z "${!name:-}" && -z "$(env_get "$name")" ]] || continue
        value=$(manifest_image "$name")
        export "$name=$value"
    done < <(manifest_entries | sed -n 's/^\([A-Z0-9_]*_IMAGE\)=.*/\1/p')
}
