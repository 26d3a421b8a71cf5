"""What the patch stage's decode tasks hand the CAM actors, before and after moving the upsampling of small
sources into the actors (issue 11 item 5: the patch stage ran at 4% of bare GradCAM++ on an H200).

    .venv/bin/python benchmarks/patch_feed.py --input /tmp/adq-bench/train --size 224 --images 2000

On the same files, in this process, one run:
  task, before   the decode task's old work per row: decode, Pillow BILINEAR resize to S x S, the S x S x 3
                 bytes shipped to the actor (plus the source for the source layout);
  task, now      `patches.source.read_sources` (decode; the source only, when it fits in S x S);
  actor upsample `PatchSelector.images` on those rows: `resample.pillow_upsample` on a GPU, Pillow on a CPU
                 (the same pixels, checked here on every row against the "before" image). On a GPU the
                 CPU time of this row is the launch overhead; the kernel time is not in it.
Prints CPU ms per row (process CPU time, which other load on the machine barely changes) and bytes per row
into the actors, as Markdown, with ratios now / before.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adq_ray.config import Config  # noqa: E402
from adq_ray.ingest.decode import to_rgb  # noqa: E402
from adq_ray.patches.dropper import PatchSelector  # noqa: E402
from adq_ray.patches.source import read_sources  # noqa: E402


def before(data: bytes, size: int) -> tuple[np.ndarray, int]:
    """The old decode task's row: the S x S image (Pillow resize on the CPU) and the bytes it shipped."""
    with Image.open(io.BytesIO(data)) as im:
        rgb, _ = to_rgb(im)
        image = np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
        source = rgb.size[0] * rgb.size[1] * 3 if rgb.size[0] * rgb.size[1] < size * size else 0
    return image, image.nbytes + source


def cpu(fn):
    """(result, CPU seconds of this process: all threads) of fn()."""
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="an ImageFolder of JPEGs (e.g. CIFAR-10's train split)")
    p.add_argument("--size", type=int, default=224, help="patch_image_size")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64, help="rows per decode-task call (the pipeline's)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    torch.set_num_threads(1)
    paths = sorted(Path(args.input).rglob("*.jp*g"))[: args.images]
    config = Config(
        input=args.input,
        output="unused",
        patch_image_size=args.size,
        patch_size=16 if args.size % 16 == 0 else 4,
        cam_model="cifar_resnet20",
        cam_weights="random",
        cam_layer="layer3",
        device=args.device,
    )
    blobs = [path.read_bytes() for path in paths]
    old, t_old = cpu(lambda: [before(b, args.size) for b in blobs])
    batches = [
        {
            "sample_id": np.arange(i, min(i + args.batch, len(paths))),
            "label": np.zeros(min(args.batch, len(paths) - i), np.int64),
            "path": np.array([str(q) for q in paths[i : i + args.batch]], dtype=object),
        }
        for i in range(0, len(paths), args.batch)
    ]
    rows, t_new = cpu(lambda: [read_sources(batch, config) for batch in batches])
    shipped = sum(len(r["image"][i]) + len(r["source"][i]) for r in rows for i in range(len(r["image"])))
    selector = PatchSelector(config)
    selector.images(rows[0])  # warm-up (coefficients, CUDA context)
    images, t_actor = cpu(lambda: [selector.images(r) for r in rows])
    same = np.concatenate([x.permute(0, 2, 3, 1).cpu().numpy() for x in images])
    assert np.array_equal(same, np.stack([image for image, _ in old])), "the actor's pixels differ from Pillow's"
    n, old_bytes = len(paths), sum(nbytes for _, nbytes in old)
    print(
        f"| {n:,} files, mean {sum(map(len, blobs)) / n:,.0f} B, S = {args.size} | CPU ms / row | bytes / row into the actors | |"
    )
    print("|---|---|---|---|")
    print(f"| task, before (decode + Pillow resize) | {1e3 * t_old / n:.3f} | {old_bytes / n:,.0f} | |")
    print(
        f"| task, now (`read_sources`) | {1e3 * t_new / n:.3f} | {shipped / n:,.0f} | "
        f"{t_new / t_old:.2f}x CPU, {shipped / old_bytes:.3f}x bytes |"
    )
    print(
        f"| actor upsample ({'`pillow_upsample`' if selector.device.type == 'cuda' else 'Pillow'}, "
        f"{selector.device}) | {1e3 * t_actor / n:.3f} | | identical pixels: "
        f"{n:,} of {n:,} rows |"
    )


if __name__ == "__main__":
    main()
