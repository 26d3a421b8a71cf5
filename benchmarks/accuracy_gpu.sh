#!/usr/bin/env bash
# benchmarks/accuracy.py on one GPU, no Ray, in one go (about 8 minutes on an H100):
#   1. prepare: the plan for all 50,000 CIFAR-10 training images (the pipeline's stage classes in 4 processes
#      on the GPU: embed + scores, GradCAM++ keep masks, bins, every arm's draw), ~1-2 min;
#   2. train: the spec's recipe (CIFAR ResNet-18, SGD 0.1 cosine, batch 128, RandomCrop + flip) with bf16 +
#      channels_last and the data resident on the GPU, 6 runs at once; the epochs are fitted to what is left
#      of TOTAL_S (default 450 s) and printed (the spec's 200 epochs do not fit 8 minutes for ~70 runs).
# Needs torch, torchvision, timm, numpy, pillow, pyarrow, this checkout, the CIFAR-10 tarball and the shared
# CIFAR ResNet-20 weights (TAR=..., WEIGHTS=... override the search below). Results: $OUT/accuracy.md,
# $OUT/accuracy_runs.json, $OUT/accuracy_plan.npz, $OUT/bins.md.
#   bash benchmarks/accuracy_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT="${OUT:-runs/accuracy/gpu}"
WORK="${WORK:-runs/accuracy/gpu_work}"
PY="${PYTHON:-python3}"
find_file() {
  for candidate in "$@"; do
    if [ -n "$candidate" ] && [ -f "$candidate" ]; then echo "$candidate"; return 0; fi
  done
  return 1
}
TAR=$(find_file "${TAR:-}" ../shared/data/cifar10-jpeg.tar.gz shared/data/cifar10-jpeg.tar.gz .gpu/cifar10-jpeg.tar.gz) \
  || { echo "no CIFAR-10 tarball: set TAR=path/to/cifar10-jpeg.tar.gz" >&2; exit 2; }
WEIGHTS=$(find_file "${WEIGHTS:-}" ../shared/weights/resnet20-12fca82f.th shared/weights/resnet20-12fca82f.th \
  .gpu/resnet20-12fca82f.th) || { echo "no CIFAR ResNet-20 weights: set WEIGHTS=path/to/resnet20-12fca82f.th" >&2; exit 2; }
mkdir -p "$OUT" "$WORK"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
export PYTHONPATH=. OMP_NUM_THREADS=1
"$PY" benchmarks/accuracy.py prepare --work "$WORK" --tar "$TAR" --weights "$WEIGHTS" --plan "$OUT/accuracy_plan.npz" \
  --num-cpus "${PREP_PROCS:-4}"
"$PY" benchmarks/accuracy.py bins --plan "$OUT/accuracy_plan.npz" | tee "$OUT/bins.md"
LEFT=$(( ${TOTAL_S:-450} - ($(date +%s) - START) ))
echo "prepare took $(( $(date +%s) - START )) s; training budget ${LEFT} s"
"$PY" benchmarks/accuracy.py train --plan "$OUT/accuracy_plan.npz" --recipe gpu --tar "$TAR" --out "$OUT" \
  --procs "${PROCS:-6}" --threads 2 --budget-s "$LEFT" \
  --arms full random dq adq --ratios 0.1 0.2 0.3 --seeds 0 1 2 --full-seeds 1 \
  --side-arms dqcell random-sel dq-sel adq-sel adq-a0.5 adq-a1.0 adq-minmax --side-ratios 0.1 \
  ${EXTRA:-}
