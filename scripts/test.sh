#!/usr/bin/env bash
# Set up, check formatting and lint, then run the test suite; arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/browser.sh || true  # headless Chromium for the report test (skipped, with a reason, without it)
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
