"""End-to-end cost per image as the input grows: the whole job on synthetic JPEGs at several sizes, on CPU.

    .venv/bin/python benchmarks/growth.py --sizes 2000 8000 32000

For each size: a class-structured synthetic ImageFolder (`benchmarks/synth.py`, 32 px JPEGs, 10 classes), then
`pipeline.compress` with the CIFAR ResNet-20 (random weights) as backbone and CAM network at 32 px (patches
of 4 px), rho 0.1, in one warm Ray session (`ray.init(num_cpus=...)` once). Prints per size: total wall, wall
per image, each stage's seconds, and separately the listing (`list_inputs`, timed again on its own), the
manifest + summary (the write stage's own time) and the report (`summary.report`, timed again on its own).
The per-image ratio largest / smallest size says whether anything grows faster than the input.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale import start_ray  # noqa: E402
from synth import write_folder  # noqa: E402

from adq_ray.config import Config  # noqa: E402


def run_size(n: int, args: argparse.Namespace) -> dict[str, float]:
    from adq_ray.ingest import list_inputs
    from adq_ray.layout import Layout
    from adq_ray.pipeline import compress
    from adq_ray.write import summary as summarize

    folder = write_folder(Path(args.workdir) / f"synth-{n}", n, args.classes, args.image_size, args.seed)
    out = Path(args.workdir) / f"out-{n}"
    shutil.rmtree(out, ignore_errors=True)
    config = Config(
        input=str(folder),
        output=str(out),
        image_size=args.image_size,
        backbone="cifar_resnet20",
        backbone_weights="random",
        cam_model="cifar_resnet20",
        cam_weights="random",
        cam_layer="layer3",
        patch_image_size=args.image_size,
        patch_size=4,
        rho=0.1,
        device="cpu",
        seed=args.seed,
    )
    start = time.perf_counter()
    summary = compress(config)
    total = time.perf_counter() - start
    t = time.perf_counter()
    inventory = list_inputs(config)
    listing = time.perf_counter() - t
    assert len(inventory) == n
    t = time.perf_counter()
    summarize.report(config, layout=Layout(config))
    report = time.perf_counter() - t
    stages = {k: float(v.get("seconds", 0)) for k, v in summary["stages"].items()}
    row = {"n": n, "total": total, "listing": listing, "report": report, **stages}
    print(
        f"| {n:,} | {total:.1f} | {1e3 * total / n:.2f} | "
        + " | ".join(f"{stages.get(s, 0):.1f}" for s in ("embed", "bins", "select", "patches", "write"))
        + f" | {listing:.2f} | {report:.2f} | {summary['counts']['kept']:,} |",
        flush=True,
    )
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="/tmp/adq-growth")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    import ray

    if not ray.is_initialized():
        start_ray(args.num_cpus)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs")
    print(
        "\n| images | total s | ms / image | embed s | bins s | select s | patches s | manifest+summary s "
        "| listing s (again) | report s (again) | kept |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = [run_size(n, args) for n in args.sizes]
    small, large = rows[0], rows[-1]
    ratio = (large["total"] / large["n"]) / (small["total"] / small["n"])
    print(f"\nPer-image time, {large['n']:,} over {small['n']:,} images: {ratio:.2f}x; load {os.getloadavg()[0]:.1f}")
    return rows


if __name__ == "__main__":
    main()
