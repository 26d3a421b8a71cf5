"""Storage ratio against the data keep ratio, per kind of source, through the patch stage's own code.

    .venv/bin/python benchmarks/storage.py                 # CIFAR 32 px, 64 px and 500x375 JPEGs, rho 0.1
    .venv/bin/python benchmarks/storage.py --codecs jpeg png

For each kind, N source files are written (or taken from the CIFAR-10 tarball), a seeded rho fraction is
drawn, and the drawn files go through `read_sources -> PatchDropper` (the Ray stage's decode task, CAM
actor and encode task, in one process) into one Parquet file. storage ratio = that file's bytes / the N
sources' bytes; data keep ratio = (drawn / N) x kept / grid^2; quotient = storage / data keep (target
<= 1.1). The CAM is the CIFAR ResNet-20 seeing 32 px for every kind (which patches are kept changes the
bytes little; the CAM network does not matter here). Prints Markdown.

Sources: "cifar32" = the CIFAR-10 training JPEGs (32 px, quality 75); "jpeg64" = the same images resized
to 64 px (bicubic) and saved at quality 90; "imagenet" = the same images resized to 500x375 (bicubic) plus
Gaussian noise (sigma 6), quality 90: ImageNet's typical shape and file size (~110 KB), not its content.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from adq_ray.config import Config
from adq_ray.ingest import extract_cifar_subset
from adq_ray.patches.dropper import PatchDropper
from adq_ray.patches.source import read_sources

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CIFAR_TAR = SHARED / "data" / "cifar10-jpeg.tar.gz"
RESNET20 = SHARED / "weights" / "resnet20-12fca82f.th"
KINDS = {"cifar32": None, "jpeg64": (64, 64, 0.0), "imagenet": (500, 375, 6.0)}


def make_kind(cifar: Path, kind: str, dest: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` source files of one kind (see the module docstring), in class folders."""
    files = sorted(cifar.glob("*/*.jpg"))[:count]
    if KINDS[kind] is None:
        return files
    width, height, noise = KINDS[kind]
    rng = np.random.default_rng(seed)
    out = []
    for path in files:
        target = dest / kind / path.parent.name / path.name
        if not target.exists():
            with Image.open(path) as im:
                big = np.asarray(im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC), np.float32)
            pixels = np.clip(big + rng.normal(0, noise, big.shape) if noise else big, 0, 255).astype(np.uint8)
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(target, format="JPEG", quality=90)
        out.append(target)
    return out


def measure(files: list[Path], config: Config, rho: float, seed: int, out: Path) -> dict[str, float]:
    """Store a seeded rho draw of `files`; the ratios of the module docstring."""
    rng = np.random.default_rng(seed)
    drawn = np.sort(rng.choice(len(files), size=max(1, int(rho * len(files) + 0.5)), replace=False))
    dropper = PatchDropper(config)
    tables = []
    start = time.perf_counter()
    for part in np.array_split(drawn, max(1, len(drawn) // config.batch_size)):
        listing = {
            "sample_id": part.astype(np.int64),
            "label": np.zeros(len(part), np.int64),
            "path": np.array([str(files[i]) for i in part], dtype=object),
        }
        tables.append(dropper(read_sources(listing, config)))
    seconds = time.perf_counter() - start
    table = pa.concat_tables(tables)
    pq.write_table(table, out)
    source = sum(f.stat().st_size for f in files)
    data_keep = len(drawn) / len(files) * config.kept_patches / config.grid**2
    storage = out.stat().st_size / source
    return {
        "n": len(files),
        "drawn": len(drawn),
        "source_avg": source / len(files),
        "stored_avg": out.stat().st_size / len(drawn),
        "data_keep": data_keep,
        "storage": storage,
        "quotient": storage / data_keep,
        "layout": "source" if table["source_height"].to_numpy().any() else "strip",
        "seconds": seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="*", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--codecs", nargs="*", default=["jpeg"], choices=["jpeg", "png", "raw"])
    p.add_argument("--count", type=int, default=1000, help="sources per kind (imagenet: a third of it)")
    p.add_argument("--rho", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="/tmp/adq-storage")
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(args.workdir)
    cifar = extract_cifar_subset(CIFAR_TAR, work / "cifar10-train", per_class=-(-args.count // 10))
    print(f"date: {time.strftime('%a %b %d %H:%M:%S %Z %Y')}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
    print(
        "| source kind | codec | rho | layout | sources (avg B) | stored per kept image (B) | data keep ratio "
        "| storage ratio | storage / data keep |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        files = make_kind(cifar, kind, work, args.count // 3 if kind == "imagenet" else args.count, args.seed)
        for codec in args.codecs:
            config = Config(
                input=str(work),
                output=str(work / "out"),
                codec=codec,
                cam_model="cifar_resnet20",
                cam_weights=str(RESNET20) if RESNET20.exists() else "random",
                cam_layer="layer3",
                cam_image_size=32,
                device="cpu",
                batch_size=32,
            )
            r = measure(files, config, args.rho, args.seed, work / f"{kind}-{codec}.parquet")
            print(
                f"| {kind} | {codec + (f' (q <= {config.jpeg_quality})' if codec == 'jpeg' else '')} | {args.rho} | {r['layout']} | {r['n']} ({r['source_avg']:.0f}) "
                f"| {r['stored_avg']:.0f} | {r['data_keep']:.4f} | {r['storage']:.4f} | {r['quotient']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
