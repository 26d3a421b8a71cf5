"""Controlled rounding of the (bin x class) quota matrix (spec section 4, corrected 2026-11-27).

Ideal cells x[n, c] = q_n cell[n, c] / N(n) are rounded to floor or ceil so that every row (bin) sums to
q_n exactly and every column (class) total is floor or ceil of t_c = sum_n x[n, c] (Cox 1987). Only the
fractional parts need deciding: row n must place e_n = sum_c frac(x[n, c]) extra units (an integer) on
its fractional cells, one at most per cell, and class c takes floor or ceil of T_c = sum_n frac(x[n, c]).
That is a flow from rows to classes; the classes rounded up form the bases of a matroid, so taking them
greedily in priority order (largest frac(t_c) first, exact ties by a seeded permutation) with one
augmenting path each gives the min-cost flow. Everything is in integers: no float decides a tie.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def controlled_rounding(quotas: Tensor, cells: Tensor, *, seed: int) -> Tensor:
    """counts (N, K) long from quotas (N,) and cell sizes (N, K): rows sum to q_n, class c gets floor/ceil of t_c."""
    q = np.asarray(quotas.cpu(), dtype=np.int64)
    cell = np.asarray(cells.cpu(), dtype=np.int64)
    size = cell.sum(1)
    if (q < 0).any() or (q > size).any():
        raise ValueError(f"quotas {q.tolist()} must lie in [0, bin size {size.tolist()}]")
    scaled = cell * q[:, None]
    safe = np.maximum(size, 1)[:, None]
    floors, rem = scaled // safe, scaled % safe
    extra = (rem.sum(1) // safe[:, 0]).tolist()  # e_n: exact, since the row's fractions sum to an integer
    lower, frac, _ = class_fractions(rem, size)
    tie = _tie_rank(cell.shape[1], seed).tolist()
    order = sorted(range(cell.shape[1]), key=lambda c: (-frac[c], tie[c]))
    flow = _Flow(rem > 0, extra)
    for c in np.flatnonzero(lower):
        for _ in range(int(lower[c])):
            if not flow.augment(int(c)):
                raise AssertionError(f"controlled rounding: class {c} cannot reach its floor (please report)")
    for c in order:
        if frac[c] and flow.slack_total:
            flow.augment(int(c))
    if flow.slack_total:
        raise AssertionError("controlled rounding: rows not met (please report)")
    return torch.from_numpy(floors + flow.used_matrix())


def class_fractions(rem: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, list[int], int]:
    """(floor T_c (K,) int64, frac T_c as integers over `scale` (K,), scale) for T_c = sum_n rem[n, c] / N(n)."""
    scale = math.lcm(*(int(s) for s in size if s > 0)) if (size > 0).any() else 1
    weight = np.array([scale // int(s) if s > 0 else 0 for s in size], dtype=object)
    total = (rem.astype(object) * weight[:, None]).sum(0) if len(rem) else np.zeros(rem.shape[1], dtype=object)
    lower = np.array([int(t) // scale for t in total], dtype=np.int64)
    return lower, [int(t) % scale for t in total], scale


def _tie_rank(k: int, seed: int) -> np.ndarray:
    """A permutation of the K classes seeded by `seed`: decides exact ties in frac(t_c), never the index."""
    return np.random.default_rng([seed, 4]).permutation(k)


class _Flow:
    """0/1 flow from rows (supplying exactly extra[n] units) to columns over the fractional cells.

    Row n can pass a unit to row m through column c when (n, c) is unused and (m, c) is used: n takes
    over c's unit and m's supply is freed. `witness[n][m]` holds those columns, kept up to date per flip
    (O(N) per flip), so an augmenting path is a BFS over the N rows only.
    """

    def __init__(self, support: np.ndarray, extra: list[int]) -> None:
        self.rows = len(extra)
        self.slack = list(extra)
        self.slack_total = sum(extra)
        self.free = [set(np.flatnonzero(col).tolist()) for col in support.T]
        self.used: list[set[int]] = [set() for _ in range(support.shape[1])]
        self.witness: list[list[set[int]]] = [[set() for _ in range(self.rows)] for _ in range(self.rows)]

    def augment(self, c: int) -> bool:
        """One more unit into column c, from a row with slack, directly or along a BFS path of transfers."""
        free = self.free[c]
        direct = [n for n in free if self.slack[n] > 0]
        if direct:
            return self._finish([min(direct, key=lambda n: (-self.slack[n], n))], c)
        parent = {n: -1 for n in range(self.rows) if self.slack[n] > 0}
        queue = list(parent)
        for n in queue:
            for m in range(self.rows):
                if m not in parent and self.witness[n][m]:
                    parent[m] = n
                    if m in free:
                        return self._finish(_path(parent, m), c)
                    queue.append(m)
        return False

    def _finish(self, path: list[int], c: int) -> bool:
        for n, m in zip(path, path[1:]):  # n takes over a unit m gave to column `via`; m's supply moves on
            via = min(self.witness[n][m])
            self._use(n, via)
            self._release(m, via)
        self._use(path[-1], c)
        self.slack[path[0]] -= 1
        self.slack_total -= 1
        return True

    def _use(self, n: int, c: int) -> None:
        free, used = self.free[c], self.used[c]
        free.remove(n)
        for m in used:
            self.witness[n][m].discard(c)
        for f in free:
            self.witness[f][n].add(c)
        used.add(n)

    def _release(self, m: int, c: int) -> None:
        free, used = self.free[c], self.used[c]
        used.remove(m)
        for f in free:
            self.witness[f][m].discard(c)
        for u in used:
            self.witness[m][u].add(c)
        free.add(m)

    def used_matrix(self) -> np.ndarray:
        out = np.zeros((self.rows, len(self.used)), dtype=np.int64)
        for c, rows in enumerate(self.used):
            out[list(rows), c] = 1
        return out


def _path(parent: dict[int, int], end: int) -> list[int]:
    path = [end]
    while parent[path[-1]] >= 0:
        path.append(parent[path[-1]])
    return path[::-1]
