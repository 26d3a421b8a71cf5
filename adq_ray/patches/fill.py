"""Filling the dropped patches, pure torch: mean colour of the kept pixels, or an MAE's prediction.

No Ray here, so training code (and benchmarks) on machines without Ray can use the pipeline's own formulas.
"""

from __future__ import annotations

import torch
from torch import nn

from adq_ray.models import normalize
from adq_ray.models.backbone import IMAGENET_MEAN, IMAGENET_STD
from adq_ray.patches.grid import expand_mask


def fill_mean(images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, C, S, S) with the dropped patches set to the per-channel mean of the kept pixels."""
    pixels = expand_mask(keep, images.shape[-1] // int(round(keep.shape[1] ** 0.5)))
    x = images.double()
    mean = (x * pixels).sum(dim=(2, 3), keepdim=True) / pixels.sum(dim=(2, 3), keepdim=True)
    return torch.where(pixels, images, mean.round().to(torch.uint8).expand_as(images))


@torch.no_grad()
def reconstruct(mae: nn.Module, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, 3, S, S) with only the dropped patches (keep False) replaced by the MAE's
    prediction: un-normalised, clamped to [0, 1], rounded to uint8. Runs on the MAE's device."""
    p, grid = mae.patch_size, mae.grid
    if images.shape[-1] != grid * p or keep.shape[1] != grid * grid:
        raise ValueError(
            f"the MAE takes {grid * p} px images in {p} px patches, got {images.shape[-1]} px, {keep.shape[1]} patches"
        )
    device = next(mae.parameters()).device
    x = images.to(device)
    pred = mae.predict_pixels(normalize(x), keep.to(device))
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    pixels = ((pred * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    return torch.where(expand_mask(keep.to(device), p), x, pixels).to(images.device)
