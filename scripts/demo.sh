#!/usr/bin/env bash
# Set up, then compress the embedded default dataset (the CIFAR-10 subset shipped in adq_ray/data) into
# outputs/cifar10-demo; arguments go to jobs/compress.py (adq compress flags override the demo's).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python jobs/compress.py "$@"
