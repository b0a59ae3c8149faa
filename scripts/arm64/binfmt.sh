#!/usr/bin/env bash
# Makes the kernel run aarch64 ELF binaries through qemu-aarch64-static (binfmt_misc).
# The "F" flag (fix-binary) opens the interpreter at registration, so it also works inside a
# chroot that has no qemu binary of its own. Idempotent.
set -euo pipefail
BM=/proc/sys/fs/binfmt_misc
if [ ! -e "$BM/register" ]; then
  mount -t binfmt_misc binfmt_misc "$BM"
fi
if [ ! -e "$BM/qemu-aarch64" ]; then
  if command -v update-binfmts >/dev/null 2>&1 && update-binfmts --display qemu-aarch64 >/dev/null 2>&1; then
    update-binfmts --enable qemu-aarch64
  else
    # binfmt-support absent or without the qemu entry: register by hand (the qemu-user-static values).
    magic='\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
    mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
    echo ":qemu-aarch64:M::$magic:$mask:$(command -v qemu-aarch64-static):FP" >"$BM/register"
  fi
fi
grep -q '^enabled' "$BM/qemu-aarch64" || { echo "binfmt: qemu-aarch64 is registered but disabled" >&2; exit 1; }
