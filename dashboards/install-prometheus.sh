#!/usr/bin/env bash
# Installs Debian's prometheus package (prometheus + promtool) when they are not on PATH yet.
# Idempotent and quiet when already installed; used by tests/integration/test_prometheus.py and .ci/run.
# Exit status: 0 when both binaries are available afterwards, non-zero otherwise.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "apt-get not available; cannot install prometheus" >&2
  exit 2
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "not root and no sudo; cannot install prometheus" >&2
    exit 2
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# The package's postinst tries to start a service; there is no init system here, and the test
# starts its own Prometheus anyway, so tell invoke-rc.d not to start anything.
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod +x "$POLICY"
  CREATED_POLICY=1
fi
trap 'if [ "$CREATED_POLICY" = 1 ]; then $SUDO rm -f "$POLICY"; fi' EXIT
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v prometheus >/dev/null && command -v promtool >/dev/null
