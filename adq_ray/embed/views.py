"""Two seeded augmented views per image for the diversity score (spec section 3).

RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3, torchvision's rule: ten tries, then a central crop) +
horizontal flip. Every random number is a counter-based hash of (seed, sample_id, view, draw), so the
views of an image do not depend on the batch it lands in, and a whole batch's crops are drawn with a
few vectorised numpy operations and cut and resized by one `roi_align` call (one kernel on a GPU).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.ops import roi_align

SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
TRIES = 10
_FLIP_DRAW = 4 * TRIES


def uniform(seed: int, sample_ids: np.ndarray, view: int, draw: int) -> np.ndarray:
    """Uniforms in [0, 1), one per sample: splitmix64 of (seed, sample_id, view, draw), 53-bit mantissa."""
    with np.errstate(over="ignore"):
        x = np.asarray(sample_ids, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x ^= np.uint64((seed * 1_000_003 + view * 10_007 + draw) & (2**64 - 1))
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            x = (x ^ (x >> np.uint64(shift))) * np.uint64(mult)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def crop_boxes(sample_ids: np.ndarray, view: int, seed: int, height: int, width: int) -> np.ndarray:
    """(n, 5) int64 rows of (top, left, h, w, flip) for one view of each sample."""
    ids = np.asarray(sample_ids, np.int64)
    n, area = len(ids), height * width
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    # Fallback when no try fits: the central crop of the clamped aspect ratio, as torchvision does.
    in_ratio = width / height
    fw, fh = (
        (width, round(width / RATIO[0]))
        if in_ratio < RATIO[0]
        else ((round(height * RATIO[1]), height) if in_ratio > RATIO[1] else (width, height))
    )
    out = np.tile(np.array([(height - fh) // 2, (width - fw) // 2, fh, fw, 0], np.int64), (n, 1))
    done = np.zeros(n, bool)
    for t in range(TRIES):
        u = [uniform(seed, ids, view, 4 * t + k) for k in range(4)]
        target = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * u[0])
        aspect = np.exp(log_lo + (log_hi - log_lo) * u[1])
        w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
        h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
        take = ~done & (w > 0) & (w <= width) & (h > 0) & (h <= height)
        top = np.floor(u[2] * (height - h + 1)).astype(np.int64)
        left = np.floor(u[3] * (width - w + 1)).astype(np.int64)
        out[take, :4] = np.stack([top, left, h, w], 1)[take]
        done |= take
    out[:, 4] = uniform(seed, ids, view, _FLIP_DRAW) < 0.5
    return out


def two_views(images: torch.Tensor, sample_ids: np.ndarray, seed: int) -> torch.Tensor:
    """(B,3,S,S) float images -> (2B,3,S,S) views: rows [0,B) are view 1, [B,2B) view 2."""
    b, _, height, width = images.shape
    crops = np.concatenate([crop_boxes(sample_ids, v, seed, height, width) for v in (0, 1)])
    top, left, h, w, flip = (torch.from_numpy(c).to(images.device) for c in crops.T)
    index = torch.arange(2 * b, device=images.device) % b
    boxes = torch.stack([index, left, top, left + w, top + h], 1).to(images.dtype)
    # Pixel (x, y) covers [x, x+1): aligned=True samples pixel centres like bilinear resize.
    views = roi_align(images, boxes, output_size=(height, width), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = flip.bool()
    views[flip] = views[flip].flip(-1)
    return views
