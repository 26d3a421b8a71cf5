"""Compact storage of the kept pixels of one image, and the dataset's Parquet schema.

One row per image (schema `dataset_schema`); any Parquet reader can decode it with an image library:

====================  ==========================  ==========================================
column                type                        meaning
====================  ==========================  ==========================================
sample_id             int64                       id of the source image
label                 int64                       class label (-1 when unlabeled)
kept_idx              fixed_size_list<int16>[K]   kept patch indices, ascending, row-major
                                                  (index = row * grid + col, grid = S / p)
patches               binary                      the kept pixels, in one of the two layouts below
codec                 string                      "png" | "jpeg" | "raw"
patch_size            int32                       p
image_size            int32                       S (the training image is S x S, grid = S / p)
nbytes                int64                       stored bytes: len(patches) + 2 K (indices)
source_height         int32                       H of the source layout; 0 = strip layout
source_width          int32                       W of the source layout; 0 = strip layout
====================  ==========================  ==========================================

Strip layout (source_height == 0; sources with at least S x S pixels): the source resized to S x S
(Pillow bilinear) is cut into p x p patches; the K kept ones, in `kept_idx` order, are laid side by
side in one strip image of height p and width K p (patch j in columns [j p, (j + 1) p)).

Source layout (source_height = H > 0; sources with fewer than S x S pixels, e.g. 32 px CIFAR at 224):
the source image itself, H x W, so no more pixels are stored than the source has. Only the pixels in
`grid.source_mask` are kept -- those that Pillow's bilinear resize to S x S reads for a pixel of a kept
patch -- the others are filled (their values mean nothing). To rebuild the training image: decode,
resize to S x S with Pillow `Image.resize((S, S), Image.Resampling.BILINEAR)` (what ingest does to the
source) and zero or restore the dropped patches: the kept patches are then the same pixels as in the
strip layout (bit-exact with png / raw).

Reading a row with pyarrow and Pillow alone (png / jpeg; `kept` = the row's `kept_idx`, p, S, g = S / p)::

    data = Image.open(io.BytesIO(row["patches"])).convert("RGB")
    if row["source_height"]:  # source layout
        image = np.array(data.resize((S, S), Image.Resampling.BILINEAR))
    else:  # strip layout
        strip, image = np.asarray(data), np.zeros((S, S, 3), np.uint8)
        for j, i in enumerate(kept):
            image[i // g * p : i // g * p + p, i % g * p : i % g * p + p] = strip[:, j * p : j * p + p]
    # the patches not in `kept` are dropped (zero them, then fill them or let an MAE paint them)

Codecs, for either layout:
- ``png``:  PNG (8-bit RGB, or grayscale when all kept pixels are grey; lossless);
- ``jpeg``: baseline JPEG with optimised Huffman tables, at min(`jpeg_quality`, the source JPEG's
  quality estimated from its luma quantisation table, `jpeg_quality_of`), so a kept image is not
  re-encoded finer than its source. Strips subsample chroma 4:2:0 only when p is a multiple of 16
  (no colour block spans two patches), else 4:4:4; the source layout uses 4:2:0;
- ``raw``:  uint8 RGB, row-major, no header: the strip (p, K p, 3), or the source-mask pixels of the
  source layout in row-major (y, x) order (`source_mask(...).sum() * 3` bytes).
"""

from __future__ import annotations

import functools
import io

import numpy as np
import pyarrow as pa
from PIL import Image

CODECS = ("png", "jpeg", "raw")
_SUBSAMPLING_420 = 2  # Pillow's subsampling code for 4:2:0


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
            ("source_height", pa.int32()),
            ("source_width", pa.int32()),
        ]
    )


def encode_patches(patches: np.ndarray, codec: str = "png", quality: int = 90) -> bytes:
    """Encode (K, p, p, 3) uint8 patches as one strip image (strip layout, see the module docstring)."""
    if patches.dtype != np.uint8 or patches.ndim != 4 or patches.shape[1] != patches.shape[2] or patches.shape[3] != 3:
        raise ValueError(f"patches must be uint8 (K, p, p, 3), got {patches.dtype} {patches.shape}")
    k, p = patches.shape[:2]
    return encode_strip(np.ascontiguousarray(patches.transpose(1, 0, 2, 3).reshape(p, k * p, 3)), codec, quality)


def encode_strip(strip: np.ndarray, codec: str, quality: int) -> bytes:
    """Encode one (p, K p, 3) uint8 strip."""
    if codec == "raw":
        return strip.tobytes()
    p = strip.shape[0]
    return _encode(strip, codec, quality, subsampling="4:2:0" if p % 16 == 0 else "4:4:4")


def encode_source(image: np.ndarray, mask: np.ndarray, codec: str, quality: int) -> bytes:
    """Encode (H, W, 3) uint8 `image` keeping only the pixels where `mask` (H, W) is True (source layout)."""
    if codec == "raw":
        return np.ascontiguousarray(image[mask]).tobytes()
    filled = fill_outside(image, mask, smooth=codec == "jpeg")
    return _encode(filled, codec, quality, subsampling="4:2:0")


def _encode(image: np.ndarray, codec: str, quality: int, subsampling: str) -> bytes:
    """PNG or JPEG bytes of an (H, W, 3) uint8 image; grayscale when all three channels are equal."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS}")
    grey = bool((image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all())
    pil = Image.fromarray(np.ascontiguousarray(image[..., 0]) if grey else image)
    out = io.BytesIO()
    if codec == "png":
        pil.save(out, format="PNG", compress_level=9)
    else:
        pil.save(out, format="JPEG", quality=int(quality), subsampling=subsampling, optimize=True)
    return out.getvalue()


def fill_outside(image: np.ndarray, mask: np.ndarray, smooth: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 with the pixels outside `mask` (H, W) filled, kept pixels untouched: by push-pull
    (`smooth`: each hole takes the mask-weighted mean of its 2x2, 4x4, ... neighbourhood, the finest
    that has kept pixels; smooth fills cost few JPEG bits), else by the kept pixels' mean colour."""
    if mask.all():
        return image
    if smooth:
        filled = _push_pull(image.astype(np.float32), mask.astype(np.float32))
    else:
        filled = np.broadcast_to(image[mask].mean(0) if mask.any() else np.float32(128), image.shape)
    return np.where(mask[..., None], image, np.clip(np.rint(filled), 0, 255).astype(np.uint8))


def _push_pull(image: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(H, W, C) float32 with the zero-weight pixels replaced by the next coarser level's weighted mean."""
    h, w = weight.shape
    if weight.all() or not weight.any() or (h == 1 and w == 1):
        mean = (image * weight[..., None]).sum((0, 1)) / weight.sum() if weight.any() else np.float32(128)
        return np.where(weight[..., None] > 0, image, mean)
    v, wt = image * weight[..., None], weight
    if h % 2 or w % 2:
        v, wt = np.pad(v, ((0, h % 2), (0, w % 2), (0, 0))), np.pad(wt, ((0, h % 2), (0, w % 2)))
    vs = v.reshape(v.shape[0] // 2, 2, v.shape[1] // 2, 2, -1).sum((1, 3))
    ws = wt.reshape(wt.shape[0] // 2, 2, wt.shape[1] // 2, 2).sum((1, 3))
    coarse = _push_pull(vs / np.maximum(ws, 1e-6)[..., None], (ws > 0).astype(np.float32))
    up = coarse.repeat(2, 0).repeat(2, 1)[:h, :w]
    return np.where(weight[..., None] > 0, image, up)


def decode_patches(data: bytes, codec: str, patch_size: int) -> np.ndarray:
    """Decode one strip back to (K, p, p, 3) uint8 patches."""
    p = patch_size
    if codec == "raw":
        if len(data) % (3 * p * p):
            raise ValueError(f"{len(data)} raw bytes are not a whole number of {p}x{p} RGB patches")
        strip = np.frombuffer(data, dtype=np.uint8).reshape(p, -1, 3)
    elif codec in ("png", "jpeg"):
        strip = _decode(data)
    else:
        raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS}")
    if strip.shape[0] != p or strip.shape[1] % p:
        raise ValueError(f"a strip of {strip.shape[1]}x{strip.shape[0]} px does not hold {p}x{p} patches")
    return strip.reshape(p, -1, p, 3).transpose(1, 0, 2, 3).copy()


def decode_source(data: bytes, codec: str, mask: np.ndarray) -> np.ndarray:
    """Decode one source-layout image to (H, W, 3) uint8 (`mask` (H, W): the kept pixels; zero elsewhere for raw)."""
    h, w = mask.shape
    if codec == "raw":
        image = np.zeros((h, w, 3), np.uint8)
        if len(data) != 3 * int(mask.sum()):
            raise ValueError(
                f"{len(data)} raw bytes do not hold the {int(mask.sum())} kept RGB pixels of a {w}x{h} image"
            )
        image[mask] = np.frombuffer(data, np.uint8).reshape(-1, 3)
        return image
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS}")
    image = _decode(data)
    if image.shape[:2] != (h, w):
        raise ValueError(f"a stored image of {image.shape[1]}x{image.shape[0]} px, expected {w}x{h}")
    return image


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


@functools.cache
def _ijg_luma_tables() -> np.ndarray:
    """(100, 64) int: the luma quantisation table libjpeg (through Pillow) writes at quality 1..100."""
    tables = []
    for quality in range(1, 101):
        out = io.BytesIO()
        Image.new("L", (8, 8)).save(out, format="JPEG", quality=quality)
        with Image.open(out) as image:
            tables.append(list(image.quantization[0]))
    return np.array(tables)


def jpeg_quality_of(image: Image.Image) -> int:
    """The IJG quality (1..100) whose luma table is nearest (L1) to an opened JPEG's; 0 if not a JPEG.

    Exact for files written by libjpeg-based encoders (Pillow, OpenCV, most cameras' IJG tables); for
    other tables, the IJG quality of about the same coarseness. Ties go to the higher quality.
    """
    tables = getattr(image, "quantization", None) if image.format == "JPEG" else None
    if not tables or len(tables[0]) != 64:
        return 0
    distance = np.abs(_ijg_luma_tables() - np.asarray(tables[0])).sum(1)
    return int(100 - np.argmin(distance[::-1]))
