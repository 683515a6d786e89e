#!/usr/bin/env bash
# System packages the end-to-end tests use (none yet beyond Python).
set -euo pipefail
exit 0
