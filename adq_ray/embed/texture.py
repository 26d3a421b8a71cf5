"""ADQ's texture level TL, the per-image representativeness score (spec section 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_LUMA = (0.299, 0.587, 0.114)
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def texture_level(images: Tensor) -> Tensor:
    """Mean of 0.5|Sobel_x| + 0.5|Sobel_y| (3x3, reflect-101 border) over the luma of each image.

    images: (B, 3, H, W), uint8 in [0, 255] or float in [0, 1]; returns (B,) float (float64 for
    float64 input, else float32).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if min(images.shape[-2:]) < 2:
        raise ValueError(f"images must be at least 2x2 for a reflect-101 border, got {tuple(images.shape[-2:])}")
    if images.dtype == torch.uint8:
        x = images.float() / 255
    elif images.is_floating_point():
        x = images.to(torch.promote_types(images.dtype, torch.float32))
    else:
        raise ValueError(f"images must be uint8 or float, got {images.dtype}")
    luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device)
    gray = torch.einsum("bchw,c->bhw", x, luma).unsqueeze(1)
    sobel_x = torch.tensor(_SOBEL_X, dtype=x.dtype, device=x.device)
    kernels = torch.stack([sobel_x, sobel_x.T]).unsqueeze(1)
    edges = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="reflect"), kernels)  # torch "reflect" is reflect-101
    return edges.abs().mean(dim=(1, 2, 3))
