#!/usr/bin/env bash
# Set up, then compress the embedded default dataset (CIFAR-10 subset from ../shared) into outputs/cifar10-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python jobs/compress.py "$@"
echo "report: outputs/cifar10-demo/report/report.html"
