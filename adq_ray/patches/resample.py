"""Pillow's BILINEAR enlargement, bit-exact, as two float64 matrix products: the same pixels as
`Image.resize((S, S), Image.Resampling.BILINEAR)` on uint8 RGB no larger than S x S, on any torch device.

The patch stage's decode tasks used to upsample every small source (a 32 px CIFAR image) to
`patch_image_size` with Pillow on a CPU and ship the result (150 KB a row at 224 px) to the CAM actors;
now they ship the source (3 KB) and the actor upsamples it here, on its own device, to the same pixels.

Pillow (`libImaging/Resample.c`) computes per output pixel a window of input pixels and double weights,
normalises them, turns them into fixed-point integers (22 fractional bits), and runs a horizontal pass
then a vertical one, each rounding half up and clipping to uint8. Every product and sum here is an integer
below 2^31, exact in float64 whatever the summation order, so the result is Pillow's bit for bit.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

PRECISION_BITS = 32 - 8 - 2  # Resample.c, 8 bits per channel


def _bilinear(x: float) -> float:
    x = -x if x < 0.0 else x
    return 1.0 - x if x < 1.0 else 0.0


@functools.lru_cache(maxsize=256)
def pillow_coefficients(n_in: int, n_out: int) -> np.ndarray:
    """float64 (n_out, n_in): Pillow's fixed-point BILINEAR weights on one axis (`precompute_coeffs` and
    `normalize_coeffs_8bpc`, same double arithmetic in the same order), as integers times 2^22."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ss = 1.0 / filterscale
    out = np.zeros((n_out, n_in), np.float64)
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero, as int()
        xmax = min(int(center + support + 0.5), n_in) - xmin
        weights = [_bilinear((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        total = 0.0
        for w in weights:
            total += w
        for x, w in enumerate(weights):
            w = w / total if total != 0.0 else w
            fixed = w * (1 << PRECISION_BITS)
            out[xx, xmin + x] = int(-0.5 + fixed) if w < 0 else int(0.5 + fixed)
    return out


def _pass(x: torch.Tensor, coefficients: np.ndarray) -> torch.Tensor:
    """float64 (..., n_in) integers 0..255 -> (..., n_out): one Pillow pass (round half up, clip to uint8)."""
    k = torch.from_numpy(coefficients).to(x.device)
    acc = x @ k.T + float(1 << (PRECISION_BITS - 1))
    return torch.floor(acc / float(1 << PRECISION_BITS)).clamp_(0, 255)


def pillow_upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> uint8 (B, C, size, size), H, W <= size: Pillow's BILINEAR resize, bit-exact.

    Enlargements only: there Pillow runs the horizontal pass then the vertical one (each only when its
    axis changes). For some reductions Pillow 13 orders the passes otherwise (checked against it), so a
    reduction is refused rather than given pixels that may differ by one.
    """
    height, width = images.shape[-2:]
    if height > size or width > size:
        raise ValueError(f"pillow_upsample enlarges only: {height}x{width} does not fit in {size}x{size}")
    x = images.to(torch.float64)
    if width != size:
        x = _pass(x, pillow_coefficients(width, size))
    if height != size:
        x = _pass(x.transpose(-1, -2), pillow_coefficients(height, size)).transpose(-1, -2)
    return x.to(torch.uint8)
