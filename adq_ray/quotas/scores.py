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


@dataclass(frozen=True)
class BinSums:
    """What Rep and Div need, summed per bin (N,): sample count (long), texture sum, view-sum sum (N, d) (float64).

    Sums of disjoint parts add up (`+`), so bins tasks can sum their own cells and the driver never holds
    a per-sample vector.
    """

    count: Tensor
    texture: Tensor
    view: Tensor

    def __add__(self, other: BinSums) -> BinSums:
        return BinSums(self.count + other.count, self.texture + other.texture, self.view + other.view)


def bin_sums(bins: Tensor, texture: Tensor, view_sum: Tensor, num_bins: int, counts: Tensor | None = None) -> BinSums:
    """Per-bin sums (N,), (N,), (N, d) of rows bins (m,), texture (m,), view_sum (m, d), in float64.

    A row is one sample (counts None: each counts 1) or an already-summed cell holding counts[i] samples.
    """
    m = len(bins)
    if texture.shape != (m,):
        raise ValueError(f"texture must be ({m},), got {tuple(texture.shape)}")
    if view_sum.ndim != 2 or len(view_sum) != m:
        raise ValueError(f"view_sum must be ({m}, d), got {tuple(view_sum.shape)}")
    if counts is not None and counts.shape != (m,):
        raise ValueError(f"counts must be ({m},), got {tuple(counts.shape)}")
    if not (torch.isfinite(texture).all() and torch.isfinite(view_sum).all()):
        raise ValueError("texture or view_sum contain NaN or inf")
    if m and (bins.min() < 0 or bins.max() >= num_bins):
        raise ValueError(f"bins must be in [0, {num_bins}), got [{int(bins.min())}, {int(bins.max())}]")
    bins = bins.long()
    ones = torch.ones(m, dtype=torch.long) if counts is None else counts.long()
    return BinSums(
        count=torch.zeros(num_bins, dtype=torch.long).index_add_(0, bins, ones),
        texture=torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, texture.double()),
        view=torch.zeros(num_bins, view_sum.shape[1], dtype=torch.float64).index_add_(0, bins, view_sum.double()),
    )


def cell_sums(
    bins: Tensor, labels: Tensor, texture: Tensor, view_sum: Tensor, num_bins: int
) -> tuple[Tensor, Tensor, BinSums]:
    """Per non-empty (bin, class) cell, (m,) each: bin, label, and its count / texture / view-sum sums.

    The inputs are per sample: bins, labels (n,) int, texture (n,), view_sum (n, d). Cells are ordered by
    (bin, label).
    """
    classes, index = torch.unique(labels.long(), return_inverse=True)
    key = bins.long() * len(classes) + index
    cells, inverse = torch.unique(key, return_inverse=True)
    sums = bin_sums(inverse, texture, view_sum, len(cells))
    return cells // len(classes), classes[cells % len(classes)], sums


def bin_scores_from_sums(sums: BinSums) -> BinScores:
    """Rep and Div of every bin from its sums (Rep = texture / count, Div = (2 count)^2 / |view|^2).

    view_sum_i = e_i,view1 + e_i,view2 of unit vectors, so the mean dot product over the (2|n|)^2
    ordered view pairs of bin n is |sum_i view_sum_i|^2 / (2|n|)^2 and Div_n is its inverse.
    """
    size = sums.count
    if (size <= 0).any():
        raise ValueError(f"every bin in [0, {len(size)}) needs at least one sample, got sizes {size.tolist()}")
    count = size.double()
    mean_similarity = sums.view.pow(2).sum(1) / (2 * count) ** 2
    if (mean_similarity <= 0).any():
        raise ValueError("a bin's views have mean similarity <= 0: Div is undefined")
    return BinScores(size=size, rep=sums.texture / count, div=1 / mean_similarity)


def bin_scores(bins: Tensor, texture: Tensor, view_sum: Tensor, num_bins: int) -> BinScores:
    """Rep and Div of every bin from per-sample texture (n,) and view sums (n, d), one pass each."""
    if len(bins) and bins.max() >= num_bins:
        raise ValueError(f"every bin in [0, {num_bins}) needs at least one sample, got bins up to {int(bins.max())}")
    return bin_scores_from_sums(bin_sums(bins, texture, view_sum, num_bins))


def cell_sizes(bins: Tensor, labels: Tensor, num_bins: int) -> tuple[Tensor, Tensor]:
    """(classes (K,), sizes (N, K)): how many samples of each class fall in each bin."""
    classes, label_index = torch.unique(labels, return_inverse=True)
    flat = torch.bincount(bins * len(classes) + label_index, minlength=num_bins * len(classes))
    return classes, flat.view(num_bins, len(classes))
