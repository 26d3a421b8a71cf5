"""Slow, obviously correct float64 references for the bin, score, quota and texture math.

Everything here is recomputed from the definitions with plain loops: no running sums, no
factorisations, no vectorised tricks. Only for tiny inputs.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np


def gradient_features(embeddings: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """DQ's materialised last-layer gradient features f = [g, vec(e (x) g)], (n, C + d C)."""
    outer = embeddings[:, :, None] * grads[:, None, :]
    return np.concatenate([grads, outer.reshape(len(grads), -1)], axis=1)


def cosine_matrix(features: np.ndarray) -> np.ndarray:
    """cos(a, b) = a.b / (|a| |b|), pair by pair; cos(a, a) = 1 exactly."""
    n = len(features)
    out = np.empty((n, n))
    for a in range(n):
        for b in range(n):
            fa, fb = features[a], features[b]
            out[a, b] = 1.0 if a == b else float(fa @ fb) / math.sqrt(float(fa @ fa) * float(fb @ fb))
    return out


def graphcut_bins(features: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """DQ bins of one pool (rows in id order) with bin sizes `sizes`: every gain recomputed at every step."""
    s = 0.5 + 0.5 * cosine_matrix(features.astype(np.float64))
    n = len(s)
    bins, ranks = np.full(n, -1), np.full(n, -1)
    pool = list(range(n))
    for k, size in enumerate(sizes):
        chosen: list[int] = []
        for step in range(size):
            best, best_gain = None, -math.inf
            for x in pool:  # ascending ids: strict ">" keeps the lowest id on ties
                if x in chosen:
                    continue
                gain = sum(s[i, x] for i in pool) - 2 * sum(s[j, x] for j in chosen)
                if gain > best_gain:
                    best, best_gain = x, gain
            chosen.append(best)
            bins[best], ranks[best] = k, step
        pool = [i for i in pool if i not in chosen]
    return bins, ranks


def dq_bin_sizes(pool_of: list[int], num_bins: int) -> dict[int, list[int]]:
    """Bin sizes per pool, DQ's loop literally (quantize_sample.py + Submodular.finish_run).

    pool_of: the pool (class, or k-means group) of every sample. coreset_size = round(|D| / N); then for
    each bin but the last, fraction = coreset_size / len(avail_indices) and each pool takes
    round(fraction * len(its samples still available)); the last bin is whatever is left.
    """
    avail = list(range(len(pool_of)))
    coreset_size = round(len(pool_of) / num_bins)
    out: dict[int, list[int]] = {p: [] for p in pool_of}
    for _ in range(num_bins - 1):
        fraction = coreset_size / len(avail)
        taken = []
        for p in sorted(out):
            members = [i for i in avail if pool_of[i] == p]
            budget = round(fraction * len(members))
            out[p].append(budget)
            taken += members[:budget]  # which ones does not matter for the sizes
        avail = [i for i in avail if i not in set(taken)]
    for p in out:
        out[p].append(sum(1 for i in avail if pool_of[i] == p))
    return out


def assign_bins(
    features: np.ndarray, labels: np.ndarray, num_bins: int, pools: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`graphcut_bins` pool by pool (each pool's samples in ascending id order); pools default to the classes."""
    pools = labels if pools is None else pools
    sizes = dq_bin_sizes(pools.tolist(), num_bins)
    bins, ranks = np.full(len(labels), -1), np.full(len(labels), -1)
    for p in np.unique(pools):
        ids = np.flatnonzero(pools == p)
        bins[ids], ranks[ids] = graphcut_bins(features[ids], sizes[int(p)])
    return bins, ranks


def texture_level(images: np.ndarray) -> np.ndarray:
    """TL per image of (B, 3, H, W) floats in [0, 1]: nested-loop 3x3 Sobel with reflect-101 indices."""
    kx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    ky = [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]

    def reflect(i: int, n: int) -> int:
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    out = np.empty(len(images))
    for b, image in enumerate(images.astype(np.float64)):
        gray = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
        h, w = gray.shape
        total = 0.0
        for y in range(h):
            for x in range(w):
                gx = gy = 0.0
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        v = gray[reflect(y + dy, h), reflect(x + dx, w)]
                        gx += kx[dy + 1][dx + 1] * v
                        gy += ky[dy + 1][dx + 1] * v
                total += 0.5 * abs(gx) + 0.5 * abs(gy)
        out[b] = total / (h * w)
    return out


def bin_scores(bins: np.ndarray, texture: np.ndarray, view1: np.ndarray, view2: np.ndarray, num_bins: int):
    """(rep, div) per bin: mean texture, and 1 / mean dot product over all (2|n|)^2 ordered view pairs."""
    rep, div = np.empty(num_bins), np.empty(num_bins)
    for k in range(num_bins):
        members = np.flatnonzero(bins == k)
        rep[k] = sum(texture[i] for i in members) / len(members)
        views = [view1[i] for i in members] + [view2[i] for i in members]
        dots = [float(a @ b) for a in views for b in views]
        div[k] = 1 / (sum(dots) / len(dots))
    return rep, div


def apportion(floors: list[int], remainders: list, capacity: list[int], total: int) -> list[int]:
    """The spec's rule, literally: min(floor, cap), then one each by descending remainder, round after round."""
    counts = [min(f, c) for f, c in zip(floors, capacity)]
    order = sorted(range(len(counts)), key=lambda i: (-remainders[i], i))
    left = total - sum(counts)
    while left > 0:
        for i in order:
            if left > 0 and counts[i] < capacity[i]:
                counts[i] += 1
                left -= 1
    return counts


def adq_bin_quotas(sizes: list[int], rep: list[float], div: list[float], rho: float, alpha: float) -> list[int]:
    """q_n from the spec's formulas in exact rationals: every float input taken at its exact value."""
    total = sum(sizes)
    budget = math.floor(rho * total + 0.5)  # the spec's B, on the float rho as given
    rep_f, div_f, a = [Fraction(r) for r in rep], [Fraction(d) for d in div], Fraction(alpha)
    ideal = []
    for r, d, s in zip(rep_f, div_f, sizes):
        weight = (r / sum(rep_f) + d / sum(div_f)) / 2
        ideal.append(budget * (a * weight + (1 - a) * Fraction(s, total)))
    floors = [math.floor(v) for v in ideal]
    return apportion(floors, [v - f for v, f in zip(ideal, floors)], sizes, budget)


def controlled_rounding(quotas: list[int], cells: list[list[int]], tie_rank: list[int]) -> set[tuple[int, ...]]:
    """Every optimal vector of class totals, by brute force over all floor/ceil choices of the fractional cells.

    Feasible: each cell floor or ceil of q_n cell / N(n), rows sum to q_n, class totals floor or ceil of
    t_c. Optimal: the set of classes rounded up is lexicographically best in the order (largest frac(t_c)
    first, ties by `tie_rank`). Only for a few fractional cells (2^cells choices).
    """
    rows, cols = len(cells), len(cells[0])
    ideal = [
        [Fraction(quotas[n] * cells[n][c], sum(cells[n])) if sum(cells[n]) else Fraction(0) for c in range(cols)]
        for n in range(rows)
    ]
    totals = [sum((ideal[n][c] for n in range(rows)), Fraction(0)) for c in range(cols)]
    priority = sorted(range(cols), key=lambda c: (-(totals[c] - math.floor(totals[c])), tie_rank[c]))
    fractional = [(n, c) for n in range(rows) for c in range(cols) if ideal[n][c].denominator != 1]
    best: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for choice in itertools.product((0, 1), repeat=len(fractional)):
        table = [[math.floor(ideal[n][c]) for c in range(cols)] for n in range(rows)]
        for (n, c), up in zip(fractional, choice):
            table[n][c] += up
        if any(sum(table[n]) != quotas[n] for n in range(rows)):
            continue
        col = tuple(sum(table[n][c] for n in range(rows)) for c in range(cols))
        if any(col[c] not in (math.floor(totals[c]), math.ceil(totals[c])) for c in range(cols)):
            continue
        key = tuple(int(col[c] > totals[c]) for c in priority)
        best.append((key, col))
    top = max(key for key, _ in best)
    return {col for key, col in best if key == top}
