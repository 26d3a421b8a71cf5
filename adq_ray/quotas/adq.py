"""ADQ quotas (spec section 4): bin importance, one global budget, largest-remainder apportionment, seeded draws."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

from adq_ray.quotas.rounding import controlled_rounding


def budget(total: int, rho: float) -> int:
    """B = floor(rho |D| + 0.5): the number of samples every sampler keeps."""
    return math.floor(rho * total + 0.5)


def importance(rep: Tensor, div: Tensor) -> Tensor:
    """I^_n = (Rep_n / sum Rep + Div_n / sum Div) / 2, summing to one over bins."""
    return (_to_one(rep) + _to_one(div)) / 2


def _to_one(x: Tensor) -> Tensor:
    # The spec is silent on all-zero scores (e.g. only flat images: every TL is 0); call the bins equal.
    total = x.sum()
    return x / total if total > 0 else torch.full_like(x, 1 / len(x))


def shares(importance: Tensor, sizes: Tensor, alpha: float) -> Tensor:
    """r_n = alpha I^_n + (1 - alpha) N(n) / sum N: the fraction of the budget bin n gets."""
    return alpha * importance + (1 - alpha) * sizes.double() / sizes.sum()


def largest_remainder(floors: Tensor, remainders: Sequence, capacity: Tensor, total: int) -> Tensor:
    """Integer counts summing to `total`: min(floors, capacity), then one each to the largest remainders.

    The leftover goes one per entry in descending remainder order (ties: lower index), skipping full
    entries, round after round. Done in closed form: t whole rounds give min(room, t) to everyone,
    then the first leftover entries (in that order) with room > t get one more. Pass exact remainders
    (Fractions or integers over one denominator): a float remainder can break an exact tie either way.
    """
    counts = torch.minimum(floors, capacity)
    left = total - int(counts.sum())
    room = capacity - counts
    if left < 0 or left > int(room.sum()):
        raise ValueError(f"cannot apportion {total} into capacities {capacity.tolist()} from floors {floors.tolist()}")
    low, high = 0, int(room.max()) if len(room) else 0
    while low < high:  # largest t with sum(min(room, t)) <= left
        mid = (low + high + 1) // 2
        low, high = (mid, high) if int(room.clamp_max(mid).sum()) <= left else (low, mid - 1)
    counts += room.clamp_max(low)
    left -= int(room.clamp_max(low).sum())
    exact = remainders.tolist() if isinstance(remainders, Tensor) else list(remainders)
    order = torch.tensor(sorted(range(len(exact)), key=lambda i: (-exact[i], i)), dtype=torch.long)
    extra = order[room[order] > low][:left]
    counts[extra] += 1
    return counts


def adq_bin_quotas(sizes: Tensor, rep: Tensor, div: Tensor, *, rho: float, alpha: float) -> Tensor:
    """q_n per bin (N,) long: shares of the global budget, capped at the bin size, summing to B exactly.

    The ideal alpha I^_n B + (1 - alpha) N(n) B / |D| is a Fraction built from the exact values of the
    float inputs, so exact ties (and alpha = 0 with rho N(n) an integer) are decided exactly on any device.
    """
    n_sizes = [int(s) for s in sizes.tolist()]
    total = sum(n_sizes)
    b = budget(total, rho)
    a = Fraction(alpha)
    weight = [(r + d) / 2 for r, d in zip(_exact_to_one(rep), _exact_to_one(div))]
    ideal = [a * w * b + (1 - a) * Fraction(s * b, total) for w, s in zip(weight, n_sizes)]
    floors = [math.floor(x) for x in ideal]
    return largest_remainder(torch.tensor(floors), [x - f for x, f in zip(ideal, floors)], sizes.long(), b)


def _exact_to_one(x: Tensor) -> list[Fraction]:
    """x / sum x in exact Fractions of the float values; all-zero scores: equal bins, as `_to_one`."""
    values = [Fraction(v) for v in x.double().tolist()]
    total = sum(values, Fraction(0))
    return [v / total for v in values] if total > 0 else [Fraction(1, len(values))] * len(values)


def split_over_classes(quotas: Tensor, cells: Tensor, *, seed: int = 0) -> Tensor:
    """Split each bin's quota (N,) over its classes (N, K) by controlled rounding of the whole matrix.

    Every cell is floor or ceil of q_n cell / N(n), every bin meets q_n exactly and every class total is
    floor or ceil of its ideal (spec section 4, corrected): no class starves because every bin broke the
    same ties the same way. Classes are rounded up by largest fractional part, exact ties by a
    permutation seeded by `seed`.
    """
    return controlled_rounding(quotas, cells, seed=seed)


def draw(bins: Tensor, labels: Tensor, counts: Tensor, classes: Tensor, *, seed: int) -> Tensor:
    """Selected mask (n,): counts[n, k] samples of class classes[k] (sorted) in bin n, seeded by (seed, n, c).

    A cell's members are taken in ascending sample order, so its draw depends only on the cell.
    """
    bins, labels = bins.cpu(), labels.cpu()
    key = bins * len(classes) + torch.searchsorted(classes, labels)
    order = torch.argsort(key, stable=True)
    cells = torch.split(order, torch.bincount(key, minlength=counts.numel()).tolist())
    selected = torch.zeros(len(bins), dtype=torch.bool)
    for (n, k), cell in zip(np.ndindex(*counts.shape), cells):
        if q := int(counts[n, k]):
            rng = np.random.default_rng([seed, n, int(classes[k])])
            selected[cell[torch.from_numpy(rng.choice(len(cell), q, replace=False))]] = True
    return selected


def uniform_selection(n: int, rho: float, *, seed: int) -> Tensor:
    """The random baseline: B = floor(rho n + 0.5) samples uniformly from the whole dataset, seeded."""
    rng = np.random.default_rng([seed])
    selected = torch.zeros(n, dtype=torch.bool)
    selected[torch.from_numpy(rng.choice(n, budget(n, rho), replace=False))] = True
    return selected
