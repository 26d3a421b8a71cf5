"""Issue 9's matrix, items 3-10, rerun: what a user sees for each crafted input or misuse (one Ray session).

    python benchmarks/safety_matrix.py [--workdir /tmp/adq-safety]

Prints a Markdown table: case, exit status (2 = one-line user error, 0 = success), seconds, and the
observed outcome (the error line, or what the output holds). Tiny inputs: 2 classes x 10 images of 32 px.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from PIL import Image

from adq_ray import ownership
from adq_ray.cli import main
from adq_ray.config import Config
from adq_ray.ingest import list_inputs
from adq_ray.tables import read_parquet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from util import TINY_MODELS  # noqa: E402  (the tests' tiny offline models: random CIFAR ResNet-20 at 32 px)

TINY = dict(
    **TINY_MODELS,
    patch_image_size=32,
    patch_size=16,
    num_bins=2,
    rho=0.3,
    batch_size=16,
)
FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]


def images(root: Path, classes: int = 2, per_class: int = 10, start: int = 0) -> Path:
    rng = np.random.default_rng(start)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            pixels = np.clip(rng.integers(0, 256, (1, 1, 3)) + rng.normal(0, 20, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"class_{c}" / f"{i:04d}.png")
    return root


def cli(*args: str) -> tuple[int, str, float]:
    """Run `adq` in this process: (exit status, last stderr line, seconds)."""
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(list(args))
        except SystemExit as exit_:
            rc = int(exit_.code or 0)
    lines = [line for line in err.getvalue().splitlines() if line.startswith(("adq: error", "adq compress: error"))]
    return rc, (lines[-1] if lines else ""), time.perf_counter() - start


def manifest(out: Path) -> pa.Table:
    return read_parquet(str(out / "manifest.parquet"))


def main_(work: Path) -> list[tuple[str, int, float, str]]:
    rows = []
    data = images(work / "x" / "dataset")
    before = sorted(p.name for p in data.rglob("*.png"))
    rc, line, s = cli("compress", "--input", str(data), "--output", str(work / "x"), *FLAGS)
    kept = sorted(p.name for p in data.rglob("*.png")) == before
    rows.append(("input `/x/dataset`, output `/x`", rc, s, f"{line}; input untouched: {kept}"))

    out = work / "two"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cmd = [sys.executable, "-m", "adq_ray.cli", "compress", "--input", str(data), "--output", str(out), *FLAGS]
    start = time.perf_counter()
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / ownership.LOCK).exists() and first.poll() is None:
        time.sleep(0.05)
    rc, line, s = cli("compress", "--input", str(data), "--output", str(out), *FLAGS)
    rows.append(("two runs into one output at once (second run)", rc, s, line))
    a_rc, a_s = first.wait(), time.perf_counter() - start
    n = manifest(out).num_rows
    rows.append(("two runs into one output at once (first run)", a_rc, a_s, f"completes alone; manifest {n} rows"))

    images(data, per_class=25, start=10)  # 50 images added
    rc, line, s = cli("compress", "--input", str(data), "--output", str(out), *FLAGS)
    summary = json.loads((out / "summary.json").read_text())
    rows.append(
        (
            "50 images added to the input, same command",
            rc,
            s,
            f"embed re-used: {summary['stages']['embed']['reused']}; manifest {manifest(out).num_rows} rows "
            f"of {sum(1 for _ in data.rglob('*.png'))} inputs",
        )
    )

    odd = images(work / "odd")
    (odd / "class_0" / "loop").symlink_to(odd)
    (odd / "class_1" / "loop2").symlink_to(odd / "class_0")
    os.mkfifo(odd / "class_0" / "pipe.png")
    (odd / "class_1" / "gone.png").symlink_to(work / "nowhere.png")
    rc, line, s = cli("compress", "--input", str(odd), "--output", str(work / "odd-out"), *FLAGS)
    m = manifest(work / "odd-out")
    rejected = m.filter(pc.equal(m["status"], "rejected"))
    reasons = sorted(set(rejected["reason"].to_pylist()))
    rows.append(
        (
            "two directory symlink loops, a FIFO, a dangling symlink (20 images)",
            rc,
            s,
            f"manifest {m.num_rows} rows; rejected: {'; '.join(reasons)}",
        )
    )

    secret = work / "cache?X-Amz-Signature=SEKRET42"
    out = work / "secret-out"
    rc, line, s = cli("compress", "--input", str(data), "--output", str(out), "--cache", str(secret), *FLAGS)
    leaked = [p.name for p in out.rglob("*") if p.is_file() and b"SEKRET42" in p.read_bytes()]
    cache_field = json.loads((out / "config.json").read_text())["cache"].rsplit("/", 1)[-1]
    rows.append(
        ("`?X-Amz-Signature=...` in the cache URI", rc, s, f"files holding it: {leaked}; config.json: {cache_field}")
    )

    labels = work / "labels.parquet"
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, "PNG")
    pq.write_table(pa.table({"image": [png.getvalue()] * 4, "label": [20_000_000, 3, 3, 20_000_000]}), labels)
    start = time.perf_counter()
    inv = list_inputs(Config(input=str(labels), output=str(work / "l-out")))
    rows.append(
        (
            "Parquet input with one label 20,000,000",
            0,
            time.perf_counter() - start,
            f"classes {inv.classes} (classes.json {len(json.dumps(inv.classes))} bytes)",
        )
    )

    (work / "bad.yaml").write_text("rho: [0.1\n")
    for name, args in (
        ("`--seed -1`", ["--input", str(data), "--output", str(work / "s"), "--seed", "-1"]),
        ("rho so small the budget is 0", ["--input", str(data), "--output", str(work / "r"), "--rho", "0.001"]),
        ("nonexistent input", ["--input", str(work / "missing"), "--output", str(work / "m")]),
        ("output is a file", ["--input", str(data), "--output", str(work / "bad.yaml")]),
        ("`--until bogus`", ["--input", str(data), "--output", str(work / "u"), "--until", "bogus"]),
    ):
        flags = [f for f in FLAGS if not (name.startswith("rho") and f.startswith("--rho"))]
        rc, line, s = cli("compress", *args, *flags)
        rows.append((name, rc, s, line))
    (work / "empty").mkdir()
    rc, line, s = cli("compress", "--input", str(work / "empty"), "--output", str(work / "e"), *FLAGS)
    rows.append(("empty input", rc, s, line))
    rc, line, s = cli("compress", "--config", str(work / "bad.yaml"), "--input", str(data), "--output", "o", *FLAGS)
    rows.append(("bad YAML", rc, s, line))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (work / "evil.pth").write_bytes(pickle.dumps({"w": Evil()}))
    flags = [f for f in FLAGS if not f.startswith("--backbone-weights")]
    evil = str(work / "evil.pth")
    rc, line, s = cli("compress", "--input", str(data), "--output", str(work / "w"), "--backbone-weights", evil, *flags)
    rows.append(("a malicious weights file", rc, s, line))
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/adq-safety")
    args = p.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print("| case | exit | seconds | observed |\n|---|---|---|---|")
    for case, rc, seconds, seen in main_(work):
        print(f"| {case} | {rc} | {seconds:.1f} | {seen.replace('|', '/')} |")
