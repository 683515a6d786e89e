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
# The TypeScript client check (tests/e2e/test_ts_client.py): pinned npm packages
# (tests/protocol/ts/package-lock.json) into tests/protocol/ts/node_modules (ignored).
TS_CHECK="$(cd "$(dirname "$0")/.." && pwd)/tests/protocol/ts"
if command -v npm >/dev/null; then
  if [ ! -d "$TS_CHECK/node_modules" ] || [ "$TS_CHECK/package-lock.json" -nt "$TS_CHECK/node_modules" ]; then
    echo "== installing the TypeScript check's npm packages (npm ci)"
    (cd "$TS_CHECK" && npm ci --no-audit --no-fund --loglevel=error)
  fi
else
  echo "== npm not found: the TypeScript client check will be skipped"
fi
