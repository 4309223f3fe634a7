#!/usr/bin/env bash
# Debian's chromium for the report's browser check (tests/test_reports_browser.py).
# Idempotent: does nothing when chromium is already on the PATH. Needs root (CI runs as root).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    echo "chromium present: $(chromium --version 2>/dev/null | head -n1)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q chromium
chromium --version 2>/dev/null | head -n1
