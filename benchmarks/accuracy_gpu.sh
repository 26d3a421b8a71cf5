#!/usr/bin/env bash
# The GPU recipe of benchmarks/accuracy.py on one GPU, no Ray: CIFAR ResNet-18, SGD 0.1 cosine, batch 128,
# bf16 + channels_last, data resident on the GPU, 6 runs at once. The epochs are fitted to the time budget
# (BUDGET_S, default 420 s of training + decoding; the spec's 200 epochs do not fit 8 minutes for 67 runs) and
# printed. Needs torch, torchvision, timm, numpy, pillow, this checkout (benchmarks/accuracy_plan.npz, from
# `python benchmarks/accuracy.py prepare` on a CPU box) and the CIFAR-10 tarball.
#   bash benchmarks/accuracy_gpu.sh            # results in $OUT (or runs/accuracy/gpu): accuracy.md, accuracy_runs.json
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/accuracy/gpu}"
PY="${PYTHON:-python3}"
TAR="${TAR:-}"
for candidate in "$TAR" ../shared/data/cifar10-jpeg.tar.gz shared/data/cifar10-jpeg.tar.gz .gpu/cifar10-jpeg.tar.gz; do
  if [ -n "$candidate" ] && [ -f "$candidate" ]; then TAR="$candidate"; break; fi
done
[ -f "$TAR" ] || { echo "no CIFAR-10 tarball: set TAR=path/to/cifar10-jpeg.tar.gz" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
PYTHONPATH=. "$PY" benchmarks/accuracy.py train --recipe gpu --tar "$TAR" --out "$OUT" \
  --procs "${PROCS:-6}" --threads 2 --budget-s "${BUDGET_S:-420}" \
  --arms full random dq adq --ratios 0.1 0.2 0.3 --seeds 0 1 2 --full-seeds 1 \
  --side-arms dqcell random-sel dq-sel adq-sel adq-a0.5 adq-a1.0 adq-minmax --side-ratios 0.1 \
  ${EXTRA:-}
