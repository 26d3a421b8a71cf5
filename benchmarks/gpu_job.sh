#!/usr/bin/env bash
# The whole compression job through Ray on one GPU node, and its in-process ceilings on the same images.
#
# Run from the repository root on the GPU machine (device tool), with these git-ignored files carried:
#   .whl/ray-py312.txz     Ray 2.60.0 (cp312: the device image's python3 is 3.12, KINDS.md; slimmed as in
#                          RAY-NOTES) + jsonschema & co., which the image lacks (put after its own site-packages)
#   .whl/cifar10-train.txz the 50,000 CIFAR-10 training JPEGs (train/<class>/NNNN.jpg)
# Build both on the CPU box with `benchmarks/gpu_bundle.sh`.
#
#   bash benchmarks/gpu_job.sh            # results (Markdown, JSON, logs) in $OUT (default /tmp/adq-gpu-out)
#
# Steps: python3 --version + pip list (fails unless the bundle matches that Python); unpack; extract the JPEGs;
# jobs/compress.py --device cuda --decode-device cuda at 224 px, resnet18 backbone and CAM with random weights
# (speed does not depend on them), rho 0.5 so 25,000 images go through the patch stage; then
# benchmarks/gpu_stages.py: nvJPEG, Embedder.embed, bare GradCAM++ and assign_bins in process on the same
# images, and the table of job rates against them. Expected: about 4 minutes on an H100 (7 at most).
set -euo pipefail
OUT="${OUT:-/tmp/adq-gpu-out}"
WORK=/tmp/adq-gpu
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/gpu_job.log") 2>&1
START=$(date +%s.%N)
elapsed() { python3 -c "import time; print(f'{time.time() - $START:.1f} s')"; }

echo "== machine: $(date -u), $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 --version
pip list 2>/dev/null > "$OUT/pip-list.txt" || python3 -m pip list > "$OUT/pip-list.txt" 2>/dev/null || true
grep -iE "^(torch|torchvision|timm|numpy|pyarrow|pandas|pillow|matplotlib|pyyaml|ray|fsspec|msgpack|protobuf) " \
  "$OUT/pip-list.txt" || true
PYVER=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
BUNDLE=".whl/ray-py${PYVER/./}.txz"
if [ ! -f "$BUNDLE" ]; then
  echo "FAIL: python3 is $PYVER, and $BUNDLE (Ray wheel for that Python) was not carried; carried: $(ls .whl 2>&1)"
  echo "      Build it on the CPU box with: PY=$PYVER bash benchmarks/gpu_bundle.sh, carry it, rerun."
  exit 3
fi
for f in "$BUNDLE" .whl/cifar10-train.txz; do
  [ -f "$f" ] || { echo "FAIL: $f is missing: pass it in the run tool's carry list"; exit 3; }
done

echo "== unpack Ray and the JPEGs ($(elapsed))"
rm -rf "$WORK/env" "$WORK/cifar" && mkdir -p "$WORK/env" "$WORK/cifar"
python3 -m tarfile -e "$BUNDLE" "$WORK/env"
python3 -m tarfile -e .whl/cifar10-train.txz "$WORK/cifar"
SITE=$(python3 -c 'import site, sys; print(":".join(site.getsitepackages() + [site.getusersitepackages()]))')
export PYTHONPATH="$PWD:$WORK/env/rayslim:$SITE:$WORK/env/deps"
export RAY_DEDUP_LOGS=0 RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 PYTHONUNBUFFERED=1
python3 - <<'EOF'
import importlib, sys
versions = {}
for name in ("ray", "ray.data", "torch", "torchvision", "timm", "numpy", "pyarrow", "pandas", "PIL", "matplotlib", "yaml"):
    module = importlib.import_module(name)
    versions[name] = f"{getattr(module, '__version__', '?')} ({module.__file__.split('/site-packages/')[-1][:40]})"
import torch
print("imports:", versions)
if not torch.cuda.is_available():
    sys.exit("FAIL: torch sees no CUDA device")
import adq_ray, adq_ray.pipeline  # noqa: F401  (the job's own imports)
EOF
IMAGES=$(find "$WORK/cifar/train" -type f | wc -l)
echo "== $IMAGES JPEGs ($(elapsed))"

echo "== the Ray job ($(elapsed))"
rm -rf "$WORK/out"
JOB_START=$(date +%s.%N)
timeout 270 python3 jobs/compress.py \
  --input "$WORK/cifar/train" --output "$WORK/out" \
  --device cuda --decode-device cuda --image-size 224 \
  --backbone resnet18 --backbone-weights random --cam-model resnet18 --cam-weights random \
  --rho 0.5 --num-bins 10 2> "$OUT/job.stderr" | tail -40 || { echo "FAIL: the job (see job.stderr)"; tail -60 "$OUT/job.stderr"; }
JOB_SECONDS=$(python3 -c "import time; print(f'{time.time() - $JOB_START:.1f}')")
ls "$WORK/out" || true
[ -f "$WORK/out/_SUCCESS" ] || { echo "FAIL: no _SUCCESS after ${JOB_SECONDS} s"; tail -80 "$OUT/job.stderr"; exit 4; }
cp "$WORK/out/summary.json" "$OUT/summary.json"
echo "== job done in ${JOB_SECONDS} s ($(elapsed))"

echo "== in-process ceilings on the same images ($(elapsed))"
timeout 110 python3 benchmarks/gpu_stages.py --input "$WORK/cifar/train" --job-output "$WORK/out" \
  --job-seconds "$JOB_SECONDS" --out "$OUT/gpu_stages.md" 2> "$OUT/stages.stderr" || {
  echo "FAIL: gpu_stages.py"; tail -40 "$OUT/stages.stderr"; exit 5; }
echo "== total $(elapsed)"
