#!/usr/bin/env bash
# Build what benchmarks/gpu_job.sh carries to a GPU machine that has no Ray (RAY-NOTES "Ray on the GPU machine"):
#   .whl/ray-py312.txz      ray 2.60.0 unpacked and slimmed (no jars, rllib, serve, llm, *.js.map, tests/),
#                           plus deps/: Ray's requirements the device image lacks (jsonschema and its own;
#                           /work/.library/device/KINDS.md lists what it holds: Python 3.12, pandas, pyarrow,
#                           matplotlib, msgpack, pyyaml, ... are there)
#   .whl/cifar10-train.txz  the 50,000 CIFAR-10 training JPEGs of ../shared/data/cifar10-jpeg.tar.gz
# Both fit the device tool's 64 MiB carry limit together (about 30 + 15.5 MB, xz). ~10 min (xz) on 2 busy cores.
#   bash benchmarks/gpu_bundle.sh              # PY=3.12 by default; EXTRA="pandas==3.1.1 ..." adds wheels
set -euo pipefail
PY="${PY:-3.12}"
TAG="cp${PY/./}"
cd "$(dirname "$0")/.."
W=.whl
PIP=(.venv/bin/pip download --no-deps --only-binary=:all: --python-version "$PY" -d)
PLAT=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)
rm -rf "$W/dl" "$W/depwhl" "$W/rayslim" "$W/deps" && mkdir -p "$W/dl" "$W/depwhl"
"${PIP[@]}" "$W/dl" --platform manylinux2014_x86_64 ray==2.60.0
"${PIP[@]}" "$W/depwhl" "${PLAT[@]}" jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 \
  rpds-py==2026.9.1 ${EXTRA:-}
# Unpack keeping each file's mode (`python -m zipfile -e` drops the exec bit of gcs_server and raylet).
.venv/bin/python - "$W" <<'EOF'
import glob, os, sys, zipfile
w = sys.argv[1]
for whl in glob.glob(f"{w}/dl/*.whl") + glob.glob(f"{w}/depwhl/*.whl"):
    dest = f"{w}/rayslim" if "/dl/" in whl else f"{w}/deps"
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            name = info.filename
            # fontTools: matplotlib imports only fontTools.agl (and misc) for PNG output.
            if name.startswith("fontTools/") and not (name.count("/") == 1 or name.startswith("fontTools/misc/")):
                continue
            path = z.extract(info, dest)
            if (mode := info.external_attr >> 16) & 0o111:
                os.chmod(path, mode & 0o777)
EOF
rm -rf "$W/rayslim/ray/jars" "$W/rayslim/ray/rllib" "$W/rayslim/ray/serve" "$W/rayslim/ray/llm" \
  "$W/deps/matplotlib/mpl-data/sample_data"
find "$W/rayslim" "$W/deps" -name "*.js.map" -delete
find "$W/rayslim" "$W/deps" -type d -name tests -prune -exec rm -rf {} +
(cd "$W" && tar cJf "ray-py${PY/./}.txz" rayslim deps)
tmp=$(mktemp -d)
tar xzf ../shared/data/cifar10-jpeg.tar.gz -C "$tmp" train
(cd "$tmp" && tar cJf "$OLDPWD/$W/cifar10-train.txz" train)
rm -rf "$tmp"
ls -la "$W"/*.txz
echo "wheel tag: $TAG"
