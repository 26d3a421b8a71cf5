#!/usr/bin/env bash
# Set up, then run the test suite (slow tests excluded; `scripts/test.sh -m slow` runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest "$@"
