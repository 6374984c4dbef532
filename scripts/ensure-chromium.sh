#!/usr/bin/env bash
# Debian's chromium for the browser test of the Ghost example (tests/integration/test_ghost.py):
# installed from apt when missing (as root), else a one-line reason. Idempotent; prints the
# browser's path on stdout.
set -euo pipefail

find_browser() { command -v chromium || command -v chromium-browser || true; }

browser=$(find_browser)
if [[ -z $browser ]]; then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: chromium is missing; install it (Debian: apt-get install chromium)" >&2
    exit 1
  fi
  echo "ensure-chromium: installing chromium from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  browser=$(find_browser)
  [[ -n $browser ]] || { echo "ensure-chromium: chromium installed but not on the PATH" >&2; exit 1; }
fi
echo "$browser"
