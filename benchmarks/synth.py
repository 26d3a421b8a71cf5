"""Class-structured synthetic JPEGs in an ImageFolder tree, for end-to-end runs at any size.

    .venv/bin/python benchmarks/synth.py /tmp/synth-8k --images 8000 --classes 10 --size 32

Class c has its own colour pair and stripe orientation/frequency; each image shifts the phase, varies the
contrast (so texture levels spread within a class), adds a blob at a random place and pixel noise. Images are
a pure function of (seed, class, index): the first n images of a larger set are the n-image set.
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image


def class_style(seed: int, c: int) -> dict[str, np.ndarray | float]:
    rng = np.random.default_rng([seed, c])
    return {
        "colours": rng.uniform(30, 225, (2, 3)),
        "angle": rng.uniform(0, np.pi),
        "freq": rng.uniform(0.1, 0.6),
    }


def synth_image(seed: int, c: int, i: int, size: int) -> np.ndarray:
    """uint8 (size, size, 3): class c's pattern, image i's phase, contrast, blob and noise."""
    style = class_style(seed, c)
    rng = np.random.default_rng([seed, c, i])
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) * (32 / size)
    wave = np.sin(style["freq"] * (x * np.cos(style["angle"]) + y * np.sin(style["angle"])) + rng.uniform(0, 6.3))
    mix = 0.5 + 0.5 * rng.uniform(0.1, 1.0) * wave
    a, b = style["colours"]
    image = a * mix[..., None] + b * (1 - mix[..., None])
    cy, cx, r = rng.uniform(0, 32, 2).tolist() + [rng.uniform(3, 9)]
    blob = ((x - cx) ** 2 + (y - cy) ** 2) < r**2
    image[blob] = rng.uniform(0, 255, 3)
    image += rng.normal(0, rng.uniform(2, 20), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_folder(root: str | Path, images: int, classes: int, size: int = 32, seed: int = 0, quality: int = 90) -> Path:
    """`images` JPEGs spread evenly over `classes` folders under root (kept if already complete)."""
    root = Path(root)
    done = root.parent / f"{root.name}.complete"  # beside the folder: every file inside it is an input
    if done.exists() and done.read_text() == f"{images} {classes} {size} {seed} {quality}":
        return root
    per_class = [images // classes + (c < images % classes) for c in range(classes)]
    for c, count in enumerate(per_class):
        folder = root / f"class_{c:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            buf = io.BytesIO()
            Image.fromarray(synth_image(seed, c, i, size)).save(buf, format="JPEG", quality=quality)
            (folder / f"{i:06d}.jpg").write_bytes(buf.getvalue())
    done.write_text(f"{images} {classes} {size} {seed} {quality}")
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("--images", type=int, default=8000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = write_folder(args.root, args.images, args.classes, args.size, args.seed)
    files = sum(len(f) for _, _, f in os.walk(root))
    print(f"{root}: {files - 1} JPEGs in {args.classes} classes")


if __name__ == "__main__":
    main()
