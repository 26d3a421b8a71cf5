"""Split a class too large for one similarity matrix into balanced groups (spec "Decision (scale)")."""

from __future__ import annotations

import torch
from torch import Tensor


def split_groups(features: Tensor, max_group: int, *, seed: int = 0, iters: int = 20) -> list[Tensor]:
    """Row ids of ceil(n / max_group) groups, each ascending, by spherical k-means on `features`.

    Deviation from the spec's "at most max_group": groups are also balanced (sizes differ by at most
    one), so no group is too small to hold every bin and the padded blocks waste nothing.
    """
    n = len(features)
    capacity = torch.tensor(group_sizes(n, max_group), dtype=torch.long, device=features.device)
    k = len(capacity)
    if k == 1:
        return [torch.arange(n, device=features.device)]
    x = torch.nn.functional.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=1)
    centroids = _init_centroids(x, k, torch.Generator().manual_seed(seed))
    for _ in range(iters):
        assign = (x @ centroids.T).argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        norms = sums.norm(dim=1, keepdim=True)
        centroids = torch.where(norms > 0, sums / norms.clamp_min(1e-12), centroids)  # empty cluster: keep
    assign = balanced_assign(x @ centroids.T, capacity)
    return [torch.nonzero(assign == j).squeeze(1) for j in range(k)]


def group_sizes(class_size: int, max_group: int) -> list[int]:
    """Sizes of the ceil(n / max_group) balanced groups `split_groups` makes of n samples (differ by <= 1)."""
    k = -(-class_size // max_group)
    return [class_size // k + (j < class_size % k) for j in range(k)]


def _init_centroids(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding on the sphere: each next centroid drawn with probability ~ squared chord distance."""
    picks = [int(torch.randint(len(x), (1,), generator=generator))]
    nearest = torch.full((len(x),), -torch.inf, dtype=x.dtype, device=x.device)
    for _ in range(k - 1):
        nearest = torch.maximum(nearest, x @ x[picks[-1]])
        weights = (2 - 2 * nearest).clamp_min(0).cpu()
        if weights.sum() == 0:  # fewer distinct points than groups: any point will do
            weights = torch.ones_like(weights)
        picks.append(int(torch.multinomial(weights, 1, generator=generator)))
    return x[picks]


def balanced_assign(scores: Tensor, capacity: Tensor) -> Tensor:
    """Assign each row of scores (n, k) to a column, column j taking exactly capacity[j] rows.

    Rounds of proposals: every unassigned row proposes to its best column with room left, and each
    column keeps its highest-scoring proposals (ties: lower row). A rejected row means a full column,
    so at most k rounds. Needs capacity.sum() == n.
    """
    n, k = scores.shape
    if int(capacity.sum()) != n:
        raise ValueError(f"capacities sum to {int(capacity.sum())}, expected {n}")
    assign = torch.full((n,), -1, dtype=torch.long, device=scores.device)
    room = capacity.clone()
    free = torch.arange(n, device=scores.device)
    while len(free):
        best_score, best = scores[free].masked_fill(room == 0, -torch.inf).max(1)
        by_score = torch.sort(best_score, descending=True, stable=True).indices
        by_column = by_score[torch.sort(best[by_score], stable=True).indices]
        proposals = torch.bincount(best, minlength=k)
        position = torch.arange(len(free), device=scores.device) - (proposals.cumsum(0) - proposals)[best[by_column]]
        accept = by_column[position < room[best[by_column]]]
        assign[free[accept]] = best[accept]
        room -= torch.bincount(best[accept], minlength=k)
        free = free[assign[free] < 0]
    return assign
