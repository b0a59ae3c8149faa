#!/usr/bin/env bash
# aarch64 wheels for the agent's base install (+ LiteRT), downloaded on the host (pip inside the
# emulated chroot fails TLS verification here) and pinned to the versions in the host venv, so
# the arm64 run tests the same stack as the x86 suite. Also builds this repo's wheel.
# Usage: wheelhouse.sh PYTHON  -> prints the wheelhouse directory on its last line.
set -euo pipefail
PY=${1:?usage: wheelhouse.sh PYTHON}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${EDGEKIT_HOME:-$HOME/.cache/edgekit}/arm64
WORK=$CACHE/work
mkdir -p "$WORK"
# This repo's wheel, fresh every run (it is the code under test).
# Built from a copy of the files git would ship (tracked + new, not ignored): an in-tree build
# would reuse build/lib, where modules deleted since the last build still linger.
rm -rf "$WORK/dist" "$WORK/src" && mkdir -p "$WORK/dist" "$WORK/src"
(cd "$REPO" && git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src" >"$WORK/wheel.log" 2>&1 \
  || { cat "$WORK/wheel.log" >&2; exit 1; }
WHEEL=$(ls "$WORK"/dist/edgekit-*.whl)
# Host pins (no editable line, no local "+cpu" builds: those are x86-only).
"$PY" -m pip freeze --exclude-editable | grep -v '+' >"$WORK/constraints.txt"
KEY=$( (cat "$WORK/constraints.txt"; unzip -p "$WHEEL" '*.dist-info/METADATA' | grep '^Requires-Dist') \
  | sha256sum | cut -c1-12)
WH=$CACHE/wheelhouse-$KEY
if [ ! -f "$WH/.complete" ]; then
  rm -rf "$WH" && mkdir -p "$WH"
  # Bookworm has glibc 2.36: any manylinux tag up to 2_36 runs there (pip does not widen a
  # --platform to older glibc tags, so each is named; ai-edge-litert ships only manylinux_2_27).
  plats=(--platform manylinux2014_aarch64)
  for v in $(seq 17 36); do plats+=(--platform "manylinux_2_${v}_aarch64"); done
  "$PY" -m pip download -q --dest "$WH" --only-binary=:all: --python-version 3.11 \
    --implementation cp --abi cp311 "${plats[@]}" -c "$WORK/constraints.txt" \
    "edgekit[litert] @ file://$WHEEL" 2>&1 | { grep -v '^WARNING: Location' >&2 || true; }
  rm -f "$WH"/edgekit-*.whl
  touch "$WH/.complete"
  find "$CACHE" -maxdepth 1 -name 'wheelhouse-*' ! -path "$WH" -exec rm -rf {} +  # superseded pins
fi
echo "$WH"
