#!/usr/bin/env bash
# System packages the end-to-end tests need: Debian's Chromium for the browser tests
# (driven by Playwright from PyPI; Playwright's own browser download is never used).
set -euo pipefail
if ! command -v chromium >/dev/null; then
  echo "== installing chromium (apt)"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
