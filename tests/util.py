"""Helpers and paths shared by the tests (a plain module: tests import it, pytest does not collect it)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adq_ray.demo import DEMO_SUBSET

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_TAR = SHARED / "data" / "cifar10-jpeg.tar.gz"
# The first 100 images per class of each CIFAR-10 split are the same files in both: all of CIFAR-10 beside
# the checkout when present, else the subset shipped in the package (enough for every test's slice).
CIFAR_TAR = SHARED_TAR if SHARED_TAR.exists() else DEMO_SUBSET
RESNET20 = SHARED / "weights" / "resnet20-12fca82f.th"
# The tiny, offline models every end-to-end test runs: a CIFAR ResNet-20 with random weights at 32 px.
TINY_MODELS = dict(
    image_size=32,
    backbone="cifar_resnet20",
    backbone_weights="random",
    cam_model="cifar_resnet20",
    cam_weights="random",
    cam_layer="layer3",
)
needs_shared = pytest.mark.skipif(
    not RESNET20.exists(), reason=f"needs trained weights {RESNET20} (the shared folder beside the checkout); absent"
)


def crash_once(marker: Path, epoch: int):
    """An `on_epoch` hook for Ray Train loops: log each epoch to `marker`.log, kill the worker once after `epoch`."""

    def hook(record):
        with open(f"{marker}.log", "a") as log:
            log.write(f"{record['epoch']}\n")
        if record["epoch"] == epoch and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # a hard crash: no exception, no cleanup, as an OOM kill or a lost node

    return hook


def make_bucket(name: str) -> str:
    """Create a bucket on the loopback S3 server (needs `s3_server`); returns its s3:// URL."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    fs.create_dir(name)
    return f"s3://{name}"


def write_image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 40, seed: int = 0) -> Path:
    """An ImageFolder tree of random-texture JPEG/PNG images, `root/<class>/<i>.<ext>`."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.integers(0, 256, size=(1, 1, 3))
            noise = rng.normal(0, 10 + 10 * (i % 4), size=(size, size, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            ext = "png" if i % 3 == 0 else "jpg"
            Image.fromarray(pixels).save(d / f"{i:04d}.{ext}")
    return root
