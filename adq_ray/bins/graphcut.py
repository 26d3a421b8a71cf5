"""DQ bin generation: greedy GraphCut bins, batched over many classes on one device (spec section 2).

`graphcut_bins` is the math on one padded block of similarity matrices; `assign_bins` is the entry
point: it validates, splits large classes (`grouping`), packs groups of similar size into blocks
that fit a memory budget and maps the results back to input order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from adq_ray.bins.grouping import split_groups
from adq_ray.bins.similarity import cosine, gradient_cosine, similarity

_CPU_BLOCK_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Bins:
    """Per sample, in input order: its bin and its greedy rank inside that bin (within its group)."""

    bin: Tensor
    rank: Tensor
    num_bins: int


def bin_sizes(sizes: Tensor, num_bins: int) -> Tensor:
    """(G,) group sizes -> (G, N) bin sizes m_k = floor(|U| / (N - k) + 0.5); the last bin is the rest."""
    left = sizes.clone()
    out = torch.empty(len(sizes), num_bins, dtype=torch.long, device=sizes.device)
    for k in range(num_bins - 1):
        parts = num_bins - k
        out[:, k] = (2 * left + parts) // (2 * parts)  # floor(left / parts + 0.5) in integers
        left -= out[:, k]
    out[:, -1] = left
    return out


def graphcut_bins(sim: Tensor, sizes: Tensor, num_bins: int) -> tuple[Tensor, Tensor]:
    """Greedy GraphCut bins for a block of groups; sim (B, n, n) is padded past each group's size.

    Bin k takes m_k greedy picks from the pool U left by bins < k, maximising
    gain(x) = sum_{i in U} s(i, x) - 2 sum_{j in S} s(j, x) (ties: lowest index). The gains are kept
    as one vector, lowered by 2 s(x, .) per pick, so each pick costs O(n): O(n^2) per group. Every group
    runs its own schedule in lockstep; the host only syncs once, for the bin openings. `sim` is
    overwritten.
    Returns (bin, rank), each (B, n) long, positions past a group's size are meaningless.
    """
    batch, n, _ = sim.shape
    device = sim.device
    steps = torch.arange(n, device=device)
    valid = steps < sizes[:, None]
    sim.masked_fill_(~(valid[:, :, None] & valid[:, None, :]), 0)

    per_bin = bin_sizes(sizes, num_bins)
    ends = per_bin.cumsum(1)
    step_bin = torch.searchsorted(ends, steps.expand(batch, n).contiguous(), right=True).clamp_max_(num_bins - 1)
    step_rank = steps - (ends - per_bin).gather(1, step_bin)
    opens_bin = (step_rank == 0) & (step_bin > 0)

    # Bins open at different steps in different groups: list them once, on the host.
    opening: dict[int, list[int]] = {}
    for b, t in opens_bin.nonzero().tolist():
        opening.setdefault(t, []).append(b)

    gain = sim.sum(1).masked_fill_(~valid, -torch.inf)  # bin 0: U is the whole group, S is empty
    taken = ~valid
    order = torch.empty(batch, n, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)
    for t in range(n):
        for b in opening.get(t, ()):
            # A new bin: U = what is left, S = {}. Summed afresh, O(n^2) per bin, so ties stay exact.
            gain[b] = (sim[b] @ (~taken[b]).to(sim.dtype)).masked_fill_(taken[b], -torch.inf)
        # A finished group (all -inf) "picks" its own zero padding slot t, so `order` stays a permutation.
        pick = torch.where(valid[:, t], gain.argmax(1), t)
        order[:, t] = pick
        taken[rows, pick] = True
        gain.sub_(sim[rows, pick], alpha=2)  # x joins S: gain(y) -= 2 s(x, y)
        gain[rows, pick] = -torch.inf

    bins = torch.empty_like(order).scatter_(1, order, step_bin)
    ranks = torch.empty_like(order).scatter_(1, order, step_rank)
    return bins, ranks


def assign_bins(
    features: Tensor,
    labels: Tensor,
    num_bins: int,
    *,
    grads: Tensor | None = None,
    max_group: int = 20_000,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    block_bytes: int | None = None,
) -> Bins:
    """DQ bins of every class: features (n, d) embeddings, labels (n,) int >= 0 (one value = unlabeled).

    With `grads` (n, C) the similarity is the cosine of DQ's gradient features [g, e (x) g] with
    e = features. Classes above `max_group` are split by spherical k-means first (spec "Decision
    (scale)"); bin k of a class is the union of its groups' bin k. Samples of a class are taken in
    input order (ties go to the earlier sample). `block_bytes` bounds one block of similarity
    matrices (default: 256 MiB on CPU, an eighth of free memory on CUDA).
    """
    _check_inputs(features, labels, num_bins, grads, max_group)
    device = torch.device(device) if device is not None else features.device
    budget = block_bytes or _default_block_bytes(device)
    groups = _groups(features, labels, num_bins, max_group, device, seed)

    bins = torch.empty(len(labels), dtype=torch.long)
    ranks = torch.empty(len(labels), dtype=torch.long)
    for block in _blocks(groups, budget, torch.finfo(dtype).bits // 8):
        index = torch.nn.utils.rnn.pad_sequence(block, batch_first=True, padding_value=0)
        sizes = torch.tensor([len(g) for g in block])
        padded = index.to(features.device)  # padding gathers sample 0; graphcut_bins masks it out
        x = features[padded].to(device, dtype)
        cos = cosine(x) if grads is None else gradient_cosine(x, grads[padded].to(device, dtype))
        block_bins, block_ranks = graphcut_bins(similarity(cos), sizes.to(device), num_bins)
        keep = torch.arange(index.shape[1]) < sizes[:, None]
        bins[index[keep]] = block_bins.cpu()[keep]
        ranks[index[keep]] = block_ranks.cpu()[keep]
    return Bins(bin=bins.to(features.device), rank=ranks.to(features.device), num_bins=num_bins)


def _check_inputs(features: Tensor, labels: Tensor, num_bins: int, grads: Tensor | None, max_group: int) -> None:
    if features.ndim != 2 or not features.is_floating_point():
        raise ValueError(f"features must be a float (n, d) tensor, got {features.dtype} {tuple(features.shape)}")
    n = len(features)
    if n == 0:
        raise ValueError("features is empty: no samples to bin")
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"labels must be (n,) = ({n},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.min() < 0:
        raise ValueError("labels must be >= 0 (they seed the per-class k-means)")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or inf")
    if grads is not None:
        if grads.ndim != 2 or len(grads) != n or not grads.is_floating_point():
            raise ValueError(f"grads must be a float (n, C) = ({n}, C) tensor, got {grads.dtype} {tuple(grads.shape)}")
        if not torch.isfinite(grads).all():
            raise ValueError("grads contain NaN or inf")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    if max_group < num_bins:
        raise ValueError(f"max_group ({max_group}) must be >= num_bins ({num_bins})")
    classes, counts = torch.unique(labels, return_counts=True)
    small = counts < num_bins
    if small.any():
        c, size = classes[small][0].item(), counts[small][0].item()
        raise ValueError(f"class {c} has {size} samples, fewer than num_bins ({num_bins}): every bin needs one")


def _groups(
    features: Tensor, labels: Tensor, num_bins: int, max_group: int, device: torch.device, seed: int
) -> list[Tensor]:
    """Sample ids (CPU, ascending) of every group: one per class, or the k-means split of a large class."""
    groups = []
    labels = labels.cpu()
    order = torch.argsort(labels, stable=True)
    classes, counts = torch.unique(labels, return_counts=True)
    for c, members in zip(classes.tolist(), torch.split(order, counts.tolist())):
        if len(members) <= max_group:
            groups.append(members)
            continue
        class_seed = int(np.random.SeedSequence([seed, c]).generate_state(1)[0])
        parts = split_groups(features[members.to(features.device)].to(device), max_group, seed=class_seed)
        if min(len(p) for p in parts) < num_bins:
            raise ValueError(f"class {c} splits into groups smaller than num_bins ({num_bins}); raise max_group")
        groups.extend(members[p.cpu()] for p in parts)
    return groups


def _blocks(groups: list[Tensor], budget: int, itemsize: int) -> list[list[Tensor]]:
    """Groups sorted by size, packed so each padded (B, n, n) block stays under `budget` bytes."""
    blocks: list[list[Tensor]] = []
    for group in sorted(groups, key=len, reverse=True):
        if blocks and (len(blocks[-1]) + 1) * len(blocks[-1][0]) ** 2 * itemsize <= budget:
            blocks[-1].append(group)
        else:
            blocks.append([group])
    return blocks


def _default_block_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 8
    return _CPU_BLOCK_BYTES
