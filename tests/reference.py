"""Slow, obviously correct float64 references for the bin, score, quota and texture math.

Everything here is recomputed from the definitions with plain loops: no running sums, no
factorisations, no vectorised tricks. Only for tiny inputs.
"""

from __future__ import annotations

import math

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


def graphcut_bins(features: np.ndarray, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """DQ bins of one class (rows in id order): every gain recomputed from scratch at every step."""
    s = 0.5 + 0.5 * cosine_matrix(features.astype(np.float64))
    n = len(s)
    bins, ranks = np.full(n, -1), np.full(n, -1)
    pool = list(range(n))
    for k in range(num_bins):
        size = len(pool) if k == num_bins - 1 else math.floor(len(pool) / (num_bins - k) + 0.5)
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


def assign_bins(features: np.ndarray, labels: np.ndarray, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """`graphcut_bins` class by class (each class's samples in ascending id order)."""
    bins, ranks = np.full(len(labels), -1), np.full(len(labels), -1)
    for c in np.unique(labels):
        ids = np.flatnonzero(labels == c)
        bins[ids], ranks[ids] = graphcut_bins(features[ids], num_bins)
    return bins, ranks


def bin_size_schedule(size: int, num_bins: int) -> list[int]:
    """m_k = floor(|U| / (N - k) + 0.5) from what is left; the last bin takes the rest."""
    out, left = [], size
    for k in range(num_bins - 1):
        out.append(math.floor(left / (num_bins - k) + 0.5))
        left -= out[-1]
    return out + [left]


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
    """q_n from the spec's formulas in plain Python floats."""
    total = sum(sizes)
    budget = math.floor(rho * total + 0.5)
    importance = [(r / sum(rep) + d / sum(div)) / 2 for r, d in zip(rep, div)]
    ideal = [alpha * i * budget + (1 - alpha) * (s * budget / total) for i, s in zip(importance, sizes)]
    floors = [math.floor(v) for v in ideal]
    return apportion(floors, [v - f for v, f in zip(ideal, floors)], sizes, budget)
