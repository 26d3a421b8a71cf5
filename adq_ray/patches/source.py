"""The patch stage's input rows: each selected source decoded once, at the patch size and (when smaller) as is.

A source with fewer than S x S pixels (S = patch_image_size) is kept at its own resolution for the
source layout of `codec` (the stored image never has more pixels than the source); the S x S image the
CAM sees is the same Pillow bilinear resize ingest makes (`ingest.decode.decode_image`).
"""

from __future__ import annotations

import io
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
from PIL import Image

from adq_ray import storage
from adq_ray.config import Config
from adq_ray.ingest import read_input_bytes
from adq_ray.ingest.decode import to_rgb  # the one RGB conversion (EXIF, modes), shared with ingest
from adq_ray.ingest.sources import PARQUET_ROW
from adq_ray.patches.codec import jpeg_quality_of

READ_THREADS = 16  # concurrent reads per batch (object-store latency, not bandwidth, bounds small files)


@dataclass(frozen=True)
class Source:
    """`image` uint8 (S, S, 3), or None when the source fits in S x S (the CAM actor upsamples it);
    `source` uint8 (H, W, 3) when H W < S^2, else None; JPEG `quality` (0: none); `reason` when unreadable."""

    image: np.ndarray | None = None
    source: np.ndarray | None = None
    quality: int = 0
    reason: str = ""


def decode_source(data: bytes, size: int, max_pixels: int) -> Source:
    """Decode once: the source itself if smaller than size x size, its JPEG quality, and the size x size bilinear
    resize (as ingest) unless the source fits in size x size: that one the CAM actor makes from the source, on
    its own device, with the same pixels (`resample.pillow_upsample`), so a 32 px CIFAR image travels as 3 KB,
    not as 150 KB of upsampled pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                if im.size[0] * im.size[1] > max_pixels:
                    return Source(reason=f"too many pixels: {im.size[0]}x{im.size[1]} > {max_pixels}")
                quality = jpeg_quality_of(im)
                rgb, _ = to_rgb(im)
                width, height = rgb.size
                source = np.asarray(rgb, dtype=np.uint8) if width * height < size * size else None
                if source is not None and width <= size and height <= size:
                    return Source(None, source, quality)
                image = np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
                return Source(image, source, quality)
    except Exception as e:  # noqa: BLE001 - a source that decoded in the embed stage and no longer does
        return Source(reason=f"unreadable at the patch stage: {type(e).__name__}: {e}")


def read_sources(batch: dict[str, np.ndarray], config: Config) -> dict[str, np.ndarray]:
    """Listing rows (sample_id, label, path) -> sample_id, label, image (raw S x S x 3 bytes, b"" when the source
    fits in S x S), status, reason, source (raw H x W x 3 bytes, b"" in the strip layout), source_height,
    source_width, source_quality."""
    size = config.patch_image_size
    paths = [str(p) for p in batch["path"]]
    storage.configure(storage.RetryPolicy.of(config))  # this worker's retries and timeouts: the run's
    fs = storage.resolve(config.input)[0]
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        blobs = list(pool.map(lambda p: _read(config, fs, p), paths))
    decoded = [b if isinstance(b, Source) else decode_source(b, size, config.max_image_pixels) for b in blobs]
    shapes = np.array([d.source.shape[:2] if d.source is not None else (0, 0) for d in decoded], np.int32).reshape(
        -1, 2
    )
    return {
        "sample_id": np.asarray(batch["sample_id"], np.int64),
        "label": np.asarray(batch["label"], np.int64),
        "image": np.array([d.image.tobytes() if d.image is not None else b"" for d in decoded], dtype=object),
        "status": np.array(["rejected" if d.reason else "ok" for d in decoded], dtype=object),
        "reason": np.array([d.reason for d in decoded], dtype=object),
        "source": np.array([d.source.tobytes() if d.source is not None else b"" for d in decoded], dtype=object),
        "source_height": shapes[:, 0],
        "source_width": shapes[:, 1],
        "source_quality": np.array([d.quality for d in decoded], np.int32),
    }


def _read(config: Config, fs: pafs.FileSystem, path: str) -> bytes | Source:
    """One input's bytes (a file, or a Parquet row `<file>#<row>`), or why it could not be read.

    Only what is wrong with the object itself (gone, forbidden, a local file's error) is a rejection; a
    transient or unknown object-store error raises (`storage.StorageError`): the stage fails, no row is lost.
    """
    try:
        if re.match(PARQUET_ROW, path):
            return read_input_bytes(config, path)
        return storage.retry(storage.read_all, fs, path.split("://", 1)[-1], what=f"read {path}")
    except storage.StorageError:
        raise
    except (OSError, IndexError) as err:
        if isinstance(err, OSError) and storage.is_remote(path) and not storage.is_permanent(err):
            raise storage.StorageError(f"read {path}", str(err)) from err
        return Source(reason=f"unreadable: {err}")
