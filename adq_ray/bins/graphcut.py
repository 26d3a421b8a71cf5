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

from adq_ray.bins.grouping import group_sizes, split_groups
from adq_ray.bins.similarity import cosine, gradient_cosine, similarity

_CPU_BLOCK_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Bins:
    """Per sample, in input order: its bin and its greedy rank inside that bin (within its group)."""

    bin: Tensor
    rank: Tensor
    num_bins: int


def bin_sizes(sizes: Tensor, num_bins: int) -> Tensor:
    """(G,) pool sizes of every group of the dataset -> (G, N) bin sizes by DQ's rule (spec section 2).

    c = round(|D| / N) once (|D| = sum of sizes); for bin k < N - 1, f_k = c / |A_k| with A_k every
    sample not yet binned, and a group with U samples left gives round(f_k U); the last bin is the rest.
    round is half-even, and f_k and f_k U are float64 products exactly as DQ computes them in Python.
    """
    left = np.asarray(sizes.cpu(), dtype=np.int64).copy()
    quotient, remainder = divmod(int(left.sum()), num_bins)  # round(|D| / N) half-even, in integers
    per_bin = quotient + (2 * remainder > num_bins or (2 * remainder == num_bins and quotient % 2 == 1))
    out = np.empty((len(left), num_bins), dtype=np.int64)
    for k in range(num_bins - 1):
        fraction = per_bin / int(left.sum()) if left.sum() else 0.0
        out[:, k] = np.minimum(np.rint(fraction * left.astype(np.float64)).astype(np.int64), left)
        left -= out[:, k]
    out[:, -1] = left
    return torch.from_numpy(out).to(sizes.device)


def graphcut_bins(sim: Tensor, per_bin: Tensor) -> tuple[Tensor, Tensor]:
    """Greedy GraphCut bins for a block of groups; sim (B, n, n) is padded past each group's size.

    per_bin (B, N) long: bin sizes m_k of each group (`bin_sizes`), summing to the group's size.
    Bin k takes m_k greedy picks from the pool U left by bins < k, maximising
    gain(x) = sum_{i in U} s(i, x) - 2 sum_{j in S} s(j, x) (ties: lowest index). The gains are kept
    as one vector, lowered by 2 s(x, .) per pick, so each pick costs O(n): O(n^2) per group. Every group
    runs its own schedule in lockstep; the host only syncs once, for the bin openings. `sim` is
    overwritten.
    Returns (bin, rank), each (B, n) long, positions past a group's size are meaningless.
    """
    batch, n, _ = sim.shape
    device = sim.device
    num_bins = per_bin.shape[1]
    steps = torch.arange(n, device=device)
    valid = steps < per_bin.sum(1)[:, None]
    sim.masked_fill_(~(valid[:, :, None] & valid[:, None, :]), 0)

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
    class_sizes: dict[int, int] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    seed: int = 0,
    block_bytes: int | None = None,
) -> Bins:
    """DQ bins of every class: features (n, d) embeddings, labels (n,) int >= 0 (one value = unlabeled).

    With `grads` (n, C) the similarity is the cosine of DQ's gradient features [g, e (x) g] with
    e = features. Classes above `max_group` are split by spherical k-means first (spec "Decision
    (scale)"); bin k of a class is the union of its groups' bin k. Samples of a class are taken in
    input order (ties go to the earlier sample). Bin sizes follow DQ's rule over the whole dataset:
    pass `class_sizes` (label -> size of every class of the dataset) when `labels` hold only some of
    its classes (default: the classes in `labels` are the dataset). `block_bytes` bounds one block of
    similarity matrices (default: 256 MiB on CPU, an eighth of free memory on CUDA). `dtype` ("float32"
    or "float64", Config.bins_dtype) is the similarity's: float32 is faster, float64 settles GraphCut's
    near-ties as DQ's float64 code does (benchmarks/RESULTS.md, "Bins: float32 against float64").
    """
    dtype = _dtype(dtype)
    _check_inputs(features, labels, num_bins, grads, max_group)
    device = torch.device(device) if device is not None else features.device
    budget = block_bytes or _default_block_bytes(device)
    groups = _groups(features, labels, num_bins, max_group, device, seed)
    schedule = _schedule(labels, class_sizes, num_bins, max_group)

    bins = torch.empty(len(labels), dtype=torch.long)
    ranks = torch.empty(len(labels), dtype=torch.long)
    for block in _blocks(groups, budget, torch.finfo(dtype).bits // 8):
        index = torch.nn.utils.rnn.pad_sequence(block, batch_first=True, padding_value=0)
        sizes = torch.tensor([len(g) for g in block])
        per_bin = torch.stack([schedule[len(g)] for g in block])
        padded = index.to(features.device)  # padding gathers sample 0; graphcut_bins masks it out
        x = features[padded].to(device, dtype)
        cos = cosine(x) if grads is None else gradient_cosine(x, grads[padded].to(device, dtype))
        block_bins, block_ranks = graphcut_bins(similarity(cos), per_bin.to(device))
        keep = torch.arange(index.shape[1]) < sizes[:, None]
        bins[index[keep]] = block_bins.cpu()[keep]
        ranks[index[keep]] = block_ranks.cpu()[keep]
    return Bins(bin=bins.to(features.device), rank=ranks.to(features.device), num_bins=num_bins)


def _schedule(labels: Tensor, class_sizes: dict[int, int] | None, num_bins: int, max_group: int) -> dict[int, Tensor]:
    """Group size -> its (N,) bin sizes under DQ's rule, with A_k counted over every group of the dataset."""
    if class_sizes is None:
        classes, counts = torch.unique(labels.cpu(), return_counts=True)
        class_sizes = dict(zip(classes.tolist(), counts.tolist()))
    else:
        _check_class_sizes(labels, class_sizes)
    pools = [s for size in class_sizes.values() for s in group_sizes(size, max_group)]
    table = bin_sizes(torch.tensor(pools, dtype=torch.long), num_bins)
    return {size: row for size, row in zip(pools, table)}  # equal pools get equal rows


def _check_class_sizes(labels: Tensor, class_sizes: dict[int, int]) -> None:
    classes, counts = torch.unique(labels.cpu(), return_counts=True)
    for c, n in zip(classes.tolist(), counts.tolist()):
        if class_sizes.get(c) != n:
            raise ValueError(
                f"class_sizes[{c}] is {class_sizes.get(c)}, but labels hold {n} samples of class {c}: "
                "pass the size of every class of the dataset"
            )


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    named = {"float32": torch.float32, "float64": torch.float64}
    if isinstance(dtype, str):
        if dtype not in named:
            raise ValueError(f"bins dtype must be 'float32' or 'float64', got {dtype!r}")
        return named[dtype]
    if dtype not in named.values():
        raise ValueError(f"bins dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


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
