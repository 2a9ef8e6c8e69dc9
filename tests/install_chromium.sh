#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/browser.py drives /usr/bin/chromium with
# playwright; no browser build is ever downloaded). Installs it with apt-get when it is missing
# and we are root; otherwise says what to run. Exits 0 when the browser is there afterwards.
set -euo pipefail
CHROMIUM=${BIREFNET_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium.sh: $CHROMIUM is missing; installing Debian's chromium with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
  if [ -x "$CHROMIUM" ]; then
    exit 0
  fi
  echo "install_chromium.sh: apt-get ran but $CHROMIUM is still missing" >&2
  exit 1
fi
echo "install_chromium.sh: $CHROMIUM is missing; the browser tests need it. Run as root:" >&2
echo "    apt-get update && apt-get install -y chromium" >&2
exit 1
