"""Cut images into a grid of square patches, put them back, and choose which patches to keep.

Patches are numbered row-major (index = row * grid + col), as in ViT / MAE.
"""

from __future__ import annotations

import functools

import numpy as np
import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, C, p, p) with L = (H/p) * (W/p), row-major."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c, p, p)


def unpatchify(patches: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, L, C, p, p) with L = grid^2 -> (B, C, grid*p, grid*p); the inverse of `patchify`."""
    b, n, c, p, _ = patches.shape
    if n != grid * grid:
        raise ValueError(f"{n} patches do not form a {grid}x{grid} grid")
    x = patches.reshape(b, grid, grid, c, p, p)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * p, grid * p)


def top_patches(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (B, keep) of the `keep` highest scores per row of (B, L), ascending; ties -> lower index."""
    if not 0 < keep <= scores.shape[1]:
        raise ValueError(f"cannot keep {keep} of {scores.shape[1]} patches")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # stable: equal scores keep index order
    return order[:, :keep].sort(dim=1).values


def keep_mask(kept_idx: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Boolean (B, L) mask, True at the kept indices (B, K)."""
    mask = torch.zeros(kept_idx.shape[0], num_patches, dtype=torch.bool, device=kept_idx.device)
    return mask.scatter_(1, kept_idx.long(), True)


def expand_mask(keep: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Patch mask (B, L) -> pixel mask (B, 1, H, W) over a square grid."""
    grid = int(round(keep.shape[1] ** 0.5))
    x = keep.reshape(-1, grid, grid)
    return x.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).unsqueeze(1)


@functools.lru_cache(maxsize=256)
def bilinear_support(n_in: int, n_out: int) -> np.ndarray:
    """Boolean (n_out, n_in): the input pixels Pillow's BILINEAR resize reads for each output pixel, on one axis.

    Pillow's `precompute_coeffs` (Resample.c): scale = n_in / n_out, support = max(scale, 1), output i reads
    inputs [int(c - support + 0.5), int(c + support + 0.5)) clipped to [0, n_in), c = (i + 0.5) scale. The
    window is a superset of the non-zero weights, so a pixel outside it never changes output i.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    center = (np.arange(n_out) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0)
    last = np.minimum(np.trunc(center + support + 0.5), n_in)
    j = np.arange(n_in)
    return (j >= first[:, None]) & (j < last[:, None])


@functools.lru_cache(maxsize=256)
def _patch_support(n_in: int, size: int, grid: int) -> np.ndarray:
    """float32 (grid, n_in): 1 where a pixel of patch row (or column) r of the size-px image reads input pixel j."""
    return bilinear_support(n_in, size).reshape(grid, size // grid, n_in).any(1).astype(np.float32)


def source_mask(keep: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """Patch keep mask (B, g^2) -> boolean (B, height, width): the source pixels that a BILINEAR resize to
    size x size reads for any pixel of a kept patch; all other source pixels can be dropped without
    changing a kept pixel of the resized image (`bilinear_support`, separable: rows^T K cols > 0)."""
    g = int(round(keep.shape[1] ** 0.5))
    rows, cols = _patch_support(height, size, g), _patch_support(width, size, g)
    return rows.T @ keep.reshape(-1, g, g).astype(np.float32) @ cols > 0
