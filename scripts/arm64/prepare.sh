#!/usr/bin/env bash
# Everything `make test-arm64` needs before its tests: binfmt, the cached arm64 rootfs, the
# cached aarch64 wheelhouse, and the agent installed in the rootfs' /opt/venv.
# Usage: prepare.sh PYTHON (the host venv's python: it pins the versions and builds the wheel)
set -euo pipefail
PY=${1:?usage: prepare.sh PYTHON}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${EDGEKIT_HOME:-$HOME/.cache/edgekit}/arm64
t0=$(date +%s)
bash "$HERE/rootfs.sh"
WH=$(bash "$HERE/wheelhouse.sh" "$PY" | tail -1)
bash "$HERE/install.sh" "$CACHE/rootfs" "$WH" "$(ls "$CACHE"/work/dist/edgekit-*.whl)"
echo "arm64: prepared in $(( $(date +%s) - t0 )) s (rootfs $CACHE/rootfs, wheels $WH)"
