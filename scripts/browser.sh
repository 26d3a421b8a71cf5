#!/usr/bin/env bash
# Install headless Chromium for tests/test_report.py where we can (root with apt-get); a no-op otherwise.
set -uo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
        || echo "scripts/browser.sh: could not install chromium; the browser test will skip" >&2
else
    echo "scripts/browser.sh: no chromium and no root apt-get; the browser test will skip" >&2
fi
