#!/usr/bin/env bash
# Builds, once, a minimal Debian arm64 bookworm root filesystem under
# ${EDGEKIT_HOME:-~/.cache/edgekit}/arm64/rootfs, run through QEMU user mode (binfmt.sh).
# The stamp is keyed by this script's hash: any edit here rebuilds it, edits elsewhere do not.
# Slow (6-7 min on 2 loaded cores): everything dpkg runs in the second stage is emulated.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${EDGEKIT_HOME:-$HOME/.cache/edgekit}/arm64
ROOTFS=$CACHE/rootfs
STAMP=$CACHE/rootfs.$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12).stamp
MIRROR=${EDGEKIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3 is 3.11 on bookworm; libstdc++6/libgomp1 are what the manylinux wheels expect of the system.
PACKAGES=python3,python3-venv,ca-certificates,libstdc++6,libgomp1

bash "$HERE/binfmt.sh"
if [ -f "$STAMP" ] && [ -x "$ROOTFS/usr/bin/python3" ]; then
  echo "arm64 rootfs: cached at $ROOTFS"
  exit 0
fi
# enter.sh mounts only in private namespaces, so nothing should be mounted here; if something is,
# rm -rf would walk into a bind-mounted /dev.
if grep -q " $CACHE/" /proc/mounts; then
  echo "arm64 rootfs: something is still mounted under $CACHE; refusing to rebuild" >&2
  exit 1
fi
rm -rf --one-file-system "$ROOTFS" "$ROOTFS.partial" "$CACHE"/rootfs.*.stamp
mkdir -p "$CACHE"
t0=$(date +%s)
# --foreign + an explicit second stage: the first stage unpacks on the host, the second runs
# the arm64 maintainer scripts under QEMU (a one-step run does the same, but hides which failed).
nice -n 10 debootstrap --arch=arm64 --variant=minbase --foreign --include="$PACKAGES" \
  bookworm "$ROOTFS.partial" "$MIRROR"
nice -n 10 chroot "$ROOTFS.partial" /debootstrap/debootstrap --second-stage
mv "$ROOTFS.partial" "$ROOTFS"
touch "$STAMP"
echo "arm64 rootfs: built in $(( $(date +%s) - t0 )) s at $ROOTFS"
