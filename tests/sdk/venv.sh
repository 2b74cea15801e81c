#!/usr/bin/env bash
# Creates (or reuses) the virtual environment of the SDK test: the official `openai` and
# `anthropic` Python SDKs from PyPI at the versions pinned in requirements.txt. The venv lives
# under the cargo target directory and is rebuilt when requirements.txt changes. Prints its path.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
target=${CARGO_TARGET_DIR:-$here/../../target}
venv=$target/sdk-venv
stamp=$venv/.requirements
if ! cmp -s "$here/requirements.txt" "$stamp" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
    cp "$here/requirements.txt" "$stamp"
fi
echo "$venv"
