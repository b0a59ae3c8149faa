#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real. Idempotent and quiet when present.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
# The clustered broker (3 nodes, MQTT listener + JetStream): tests/support/nats.py.
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
# PostgreSQL for the fleet's second backend: initdb/pg_ctl in a temp dir (tests/support/postgres.py).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
# systemd-analyze security/verify on deploy/*.service (tests/test_systemd_units.py).
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The README quick tour (tests/test_docs.py) uses curl and jq.
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v jq >/dev/null 2>&1 || need+=(jq)
command -v chromium >/dev/null 2>&1 || need+=(chromium chromium-driver)
# QEMU user mode runs ONNX Runtime as an AVX2-without-VNNI CPU (tests/converters/test_int8_cpu_classes.py).
if [ "$(uname -m)" = x86_64 ] && ! command -v qemu-x86_64-static >/dev/null 2>&1 \
  && ! command -v qemu-x86_64 >/dev/null 2>&1; then
  need+=(qemu-user-static)
fi
# The aarch64 agent check (make test-arm64): a Debian arm64 rootfs run through QEMU user mode + binfmt.
if [ "${EDGEKIT_ARM64:-0}" = 1 ]; then
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
  command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
  command -v update-binfmts >/dev/null 2>&1 || [ -x /usr/sbin/update-binfmts ] || need+=(binfmt-support)
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The broker is started by the tests on their own ports; the packaged service is not needed.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
  systemctl stop mosquitto || true
fi
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nats-server 2>/dev/null; then
  systemctl stop nats-server || true
fi
