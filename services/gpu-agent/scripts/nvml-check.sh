#!/usr/bin/env bash
# Prints what NVML reports on this GPU node, through the agent's own NVML code
# (`privaterouter-gpu-agent --check`: driver, each GPU's model, utilization, memory,
# temperature, power, how long one read takes, and the exact /v1/gpus body), then the same
# figures from nvidia-smi for comparison when it is installed. Read-only; safe to run twice.
set -euo pipefail

usage() {
    echo "usage: $0 [path/to/privaterouter-gpu-agent]" >&2
    echo "  Without a path: privaterouter-gpu-agent on PATH, else a release build in the" >&2
    echo "  repository's target folder, else one is built with cargo. PR_AGENT_NVML_LIB and" >&2
    echo "  PR_AGENT_NODE_NAME are honoured as by the agent." >&2
}

case "${1:-}" in
-h | --help)
    usage
    exit 0
    ;;
esac
if (($# > 1)); then
    usage
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
bin="${1:-}"
if [[ -z $bin ]]; then
    if command -v privaterouter-gpu-agent >/dev/null 2>&1; then
        bin="$(command -v privaterouter-gpu-agent)"
    elif [[ -x $target/release/privaterouter-gpu-agent ]]; then
        bin="$target/release/privaterouter-gpu-agent"
    elif command -v cargo >/dev/null 2>&1; then
        echo "==> building privaterouter-gpu-agent (release)" >&2
        (cd "$root" && cargo build --release -p privaterouter-gpu-agent >&2)
        bin="$target/release/privaterouter-gpu-agent"
    else
        echo "error: no privaterouter-gpu-agent binary found and no cargo to build one." >&2
        echo "Build it (cargo build --release -p privaterouter-gpu-agent) or pass its path." >&2
        exit 1
    fi
fi
if [[ ! -x $bin ]]; then
    echo "error: $bin is not an executable file." >&2
    exit 1
fi

echo "== $bin --check"
if ! "$bin" --check; then
    echo >&2
    echo "The agent could not read NVML (reason above). Check that the NVIDIA driver is loaded" >&2
    echo "(nvidia-smi), or point PR_AGENT_NVML_LIB at libnvidia-ml.so.1 if it is installed elsewhere." >&2
    exit 1
fi

echo
echo "== nvidia-smi (for comparison)"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw \
        --format=csv
    nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1 | sed 's/^/driver: /'
else
    echo "nvidia-smi is not installed; no comparison."
fi

echo
echo "Record the GPU model and the figures above (and the read time) in"
echo "services/gpu-agent/README.md, section \"Checked on real GPUs\"."
