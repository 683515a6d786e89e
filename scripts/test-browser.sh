#!/usr/bin/env bash
# Runs the Chromium end-to-end tests inside a private network namespace with only
# loopback up, so nothing can be sent to any other address.
set -euo pipefail
cd "$(dirname "$0")/.."
exec unshare -n sh -c 'ip link set lo up && STREAMSEG_NETNS=1 exec .venv/bin/python -m pytest -q -m browser "$@"' sh "$@"
