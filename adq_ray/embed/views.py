"""Two seeded augmented views per image for the diversity score (spec section 3).

RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3, torchvision's algorithm) + horizontal flip, drawn per
sample from (seed, sample_id, view): the views of an image do not depend on the batch it lands in.
All crops of a batch are cut and resized by one `roi_align` call, so the step is one kernel on a GPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.ops import roi_align

SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
_TRIES = 10


def crop_params(sample_id: int, view: int, seed: int, height: int, width: int) -> tuple[int, int, int, int, bool]:
    """(top, left, h, w, flip) of one view, exactly torchvision's RandomResizedCrop rule."""
    rng = np.random.default_rng([seed, sample_id, view])
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(_TRIES):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w, bool(rng.random() < 0.5)
    # Fallback: the central crop of the clamped aspect ratio, as torchvision does.
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif in_ratio > RATIO[1]:
        h, w = height, int(round(height * RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w, bool(rng.random() < 0.5)


def two_views(images: torch.Tensor, sample_ids: np.ndarray, seed: int) -> torch.Tensor:
    """(B,3,S,S) float images -> (2B,3,S,S) views: rows [0,B) are view 1, [B,2B) view 2."""
    b, _, height, width = images.shape
    params = [crop_params(int(s), v, seed, height, width) for v in (0, 1) for s in sample_ids]
    boxes = torch.tensor(
        [[i % b, left, top, left + w, top + h] for i, (top, left, h, w, _) in enumerate(params)],
        dtype=images.dtype,
        device=images.device,
    )
    # Pixel (x, y) covers [x, x+1): aligned=True samples pixel centres like bilinear resize.
    views = roi_align(images, boxes, output_size=(height, width), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = torch.tensor([p[4] for p in params], device=images.device)
    views[flip] = views[flip].flip(-1)
    return views
