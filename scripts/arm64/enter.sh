#!/usr/bin/env bash
# Runs a command inside the arm64 rootfs, as an aarch64 process under QEMU user mode.
# Usage: enter.sh ROOTFS [-b HOST_DIR]... -- COMMAND [ARGS...]
#
# The mounts live in a private mount namespace of this process only: they vanish when the command
# exits (no clean-up to forget, nothing left under the cached rootfs), and the host never sees
# the aarch64 /proc/cpuinfo. The network namespace is the host's, so 127.0.0.1 is the host's
# loopback. -b binds a host directory at the same path inside (configs, data dirs). The command
# is exec'd, so the caller's pid is the emulated process and signals reach it.
set -euo pipefail
if [ -z "${_EDGEKIT_ARM64_NS:-}" ]; then
  exec unshare --mount --propagation private env _EDGEKIT_ARM64_NS=1 bash "${BASH_SOURCE[0]}" "$@"
fi
ROOTFS=${1:?usage: enter.sh ROOTFS [-b DIR]... -- COMMAND...}
shift
binds=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
  case $1 in
    -b) binds+=("$2"); shift 2 ;;
    *) echo "enter.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ "${1:-}" = -- ] && shift
[ $# -gt 0 ] || { echo "enter.sh: no command" >&2; exit 2; }

mount --rbind /dev "$ROOTFS/dev"
mount --rbind /sys "$ROOTFS/sys"  # ONNX Runtime aborts at import without /sys/devices/system/cpu/possible
mount --bind /proc "$ROOTFS/proc"
# An x86 /proc/cpuinfo makes cpuinfo (ONNX Runtime's CPU probe) abort on aarch64: show it the
# aarch64 file it expects, one entry per host CPU (Neoverse-N1 features; QEMU's "max" CPU has them).
cpuinfo=$ROOTFS/etc/edgekit-cpuinfo.aarch64
n=$(nproc --all)
for ((i = 0; i < n; i++)); do
  printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$i"
done >"$cpuinfo"
mount --bind "$cpuinfo" "$ROOTFS/proc/cpuinfo"
for d in "${binds[@]}"; do
  mkdir -p "$ROOTFS$d"
  mount --bind "$d" "$ROOTFS$d"
done

# A clean environment: the host's PATH/PYTHONPATH/VIRTUAL_ENV mean nothing in there; EDGEKIT_*
# settings (log level, config overrides) pass through, except the host's cache location.
envs=(PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 TZ=UTC)
while IFS= read -r -d '' kv; do
  case $kv in EDGEKIT_HOME=* | _EDGEKIT_*) ;; EDGEKIT_* | COLUMNS=*) envs+=("$kv") ;; esac
done < <(env -0)
exec chroot "$ROOTFS" /usr/bin/env -i "${envs[@]}" "$@"
