"""Compact storage of the kept patches of one image, and the dataset's Parquet schema.

Encoding of one image (column `patches`): its K kept patches (each p x p RGB, in ascending
patch index order, the order of `kept_idx`) are laid side by side, left to right, in one strip
image of height p and width K * p; patch j occupies columns [j*p, (j+1)*p). The strip is stored as

- ``png``:  a PNG file (8-bit RGB, lossless: decoding gives the exact pixels);
- ``jpeg``: a baseline JPEG file at `jpeg_quality`; chroma is subsampled 4:2:0 only when p is a
  multiple of 16, else kept 4:4:4, so no colour block spans two patches (luma blocks are 8x8);
- ``raw``:  the strip's uint8 pixels, row-major (p, K*p, 3), no header (K = len / (3 p^2)).

One row per image (schema `dataset_schema`):

====================  ==========================  ==========================================
column                type                        meaning
====================  ==========================  ==========================================
sample_id             int64                       id of the source image
label                 int64                       class label (-1 when unlabeled)
kept_idx              fixed_size_list<int16>[K]   kept patch indices, ascending, row-major
                                                  (index = row * grid + col, grid = S / p)
patches               binary                      the strip, encoded as above
codec                 string                      "png" | "jpeg" | "raw"
patch_size            int32                       p
image_size            int32                       S (the image is S x S, grid = S / p)
nbytes                int64                       stored bytes: len(patches) + 2 K (indices)
====================  ==========================  ==========================================
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image

CODECS = ("png", "jpeg", "raw")


def dataset_schema(kept: int) -> pa.Schema:
    """The Parquet schema of a compressed dataset keeping `kept` patches per image."""
    return pa.schema(
        [
            ("sample_id", pa.int64()),
            ("label", pa.int64()),
            ("kept_idx", pa.list_(pa.int16(), kept)),
            ("patches", pa.binary()),
            ("codec", pa.string()),
            ("patch_size", pa.int32()),
            ("image_size", pa.int32()),
            ("nbytes", pa.int64()),
        ]
    )


def encode_patches(patches: np.ndarray, codec: str = "png", quality: int = 90) -> bytes:
    """Encode (K, p, p, 3) uint8 patches as one strip image (see the module docstring)."""
    if patches.dtype != np.uint8 or patches.ndim != 4 or patches.shape[1] != patches.shape[2] or patches.shape[3] != 3:
        raise ValueError(f"patches must be uint8 (K, p, p, 3), got {patches.dtype} {patches.shape}")
    k, p = patches.shape[:2]
    strip = np.ascontiguousarray(patches.transpose(1, 0, 2, 3).reshape(p, k * p, 3))
    if codec == "raw":
        return strip.tobytes()
    out = io.BytesIO()
    if codec == "png":
        Image.fromarray(strip).save(out, format="PNG", compress_level=9)
    elif codec == "jpeg":
        subsampling = "4:2:0" if p % 16 == 0 else "4:4:4"
        Image.fromarray(strip).save(out, format="JPEG", quality=quality, subsampling=subsampling)
    else:
        raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS}")
    return out.getvalue()


def decode_patches(data: bytes, codec: str, patch_size: int) -> np.ndarray:
    """Decode one strip back to (K, p, p, 3) uint8 patches."""
    p = patch_size
    if codec == "raw":
        if len(data) % (3 * p * p):
            raise ValueError(f"{len(data)} raw bytes are not a whole number of {p}x{p} RGB patches")
        strip = np.frombuffer(data, dtype=np.uint8).reshape(p, -1, 3)
    elif codec in ("png", "jpeg"):
        with Image.open(io.BytesIO(data)) as image:
            strip = np.asarray(image.convert("RGB"))
    else:
        raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS}")
    if strip.shape[0] != p or strip.shape[1] % p:
        raise ValueError(f"a strip of {strip.shape[1]}x{strip.shape[0]} px does not hold {p}x{p} patches")
    return strip.reshape(p, -1, p, 3).transpose(1, 0, 2, 3).copy()
