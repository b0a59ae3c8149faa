#!/usr/bin/env bash
# Installs the agent's base install (+ LiteRT) into /opt/venv of the arm64 rootfs, offline from
# the host-downloaded wheelhouse. Dependencies are synced once per wheelhouse (a stamp in the
# venv; eager upgrade to exactly the wheelhouse's versions, a few minutes under QEMU); this
# repo's wheel, the code under test, is reinstalled on every run.
# Usage: install.sh ROOTFS WHEELHOUSE EDGEKIT_WHEEL
set -euo pipefail
ROOTFS=$1 WH=$2 WHEEL=$3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STAMP=$ROOTFS/opt/venv/.deps-$(basename "$WH")
in_arm64() { bash "$HERE/enter.sh" "$ROOTFS" -b "$WH" -b "$(dirname "$WHEEL")" -- "$@"; }
pip=(/opt/venv/bin/pip install -q --no-index --find-links "$WH" --disable-pip-version-check)
[ -x "$ROOTFS/opt/venv/bin/python" ] || in_arm64 /usr/bin/python3 -m venv /opt/venv
if [ ! -f "$STAMP" ]; then
  in_arm64 "${pip[@]}" --upgrade --upgrade-strategy eager "edgekit[litert] @ file://$WHEEL"
  rm -f "$ROOTFS"/opt/venv/.deps-*
  touch "$STAMP"
fi
in_arm64 "${pip[@]}" --no-deps --force-reinstall "$WHEEL"
