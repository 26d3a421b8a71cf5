"""Per-bin statistics ADQ weighs bins by (spec section 3): size, representativeness, diversity."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BinScores:
    """(N,) per bin: sample count (long), Rep = mean texture level, Div = 1 / mean view similarity (float64)."""

    size: Tensor
    rep: Tensor
    div: Tensor


def bin_scores(bins: Tensor, texture: Tensor, view_sum: Tensor, num_bins: int) -> BinScores:
    """Rep and Div of every bin from per-sample texture (n,) and view sums (n, d), one pass each.

    view_sum_i = e_i,view1 + e_i,view2 of unit vectors, so the mean dot product over the (2|n|)^2
    ordered view pairs of bin n is |sum_i view_sum_i|^2 / (2|n|)^2 and Div_n is its inverse.
    """
    n = len(bins)
    if texture.shape != (n,):
        raise ValueError(f"texture must be ({n},), got {tuple(texture.shape)}")
    if view_sum.ndim != 2 or len(view_sum) != n:
        raise ValueError(f"view_sum must be ({n}, d), got {tuple(view_sum.shape)}")
    if not (torch.isfinite(texture).all() and torch.isfinite(view_sum).all()):
        raise ValueError("texture or view_sum contain NaN or inf")
    size = torch.bincount(bins, minlength=num_bins)
    if len(size) > num_bins or (size == 0).any():
        raise ValueError(f"every bin in [0, {num_bins}) needs at least one sample, got sizes {size.tolist()}")
    count = size.double()
    rep = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, texture.double()) / count
    total = torch.zeros(num_bins, view_sum.shape[1], dtype=torch.float64).index_add_(0, bins, view_sum.double())
    mean_similarity = total.pow(2).sum(1) / (2 * count) ** 2
    if (mean_similarity <= 0).any():
        raise ValueError("a bin's views have mean similarity <= 0: Div is undefined")
    return BinScores(size=size, rep=rep, div=1 / mean_similarity)


def cell_sizes(bins: Tensor, labels: Tensor, num_bins: int) -> tuple[Tensor, Tensor]:
    """(classes (K,), sizes (N, K)): how many samples of each class fall in each bin."""
    classes, label_index = torch.unique(labels, return_inverse=True)
    flat = torch.bincount(bins * len(classes) + label_index, minlength=num_bins * len(classes))
    return classes, flat.view(num_bins, len(classes))
