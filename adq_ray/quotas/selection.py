"""Choose the samples to keep from their bins: ADQ quotas, DQ's per-cell rate, or uniform at random."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from adq_ray.config import Sampler
from adq_ray.quotas.adq import adq_bin_quotas, draw, importance, shares, split_over_classes, uniform_selection
from adq_ray.quotas.dq import dq_cell_counts
from adq_ray.quotas.scores import BinScores, BinSums, bin_scores, bin_scores_from_sums, cell_sizes

log = logging.getLogger("adq_ray")


@dataclass(frozen=True)
class Selection:
    """The kept samples (n,) bool and the per-bin numbers behind them, (N,) each."""

    selected: Tensor
    scores: BinScores
    importance: Tensor
    share: Tensor
    quota: Tensor
    count: Tensor

    def table(self) -> list[dict[str, Any]]:
        """One JSON-ready row per bin: size, rep, div, importance, share (ADQ's r_n), quota, selected."""
        columns = {
            "size": self.scores.size,
            "rep": self.scores.rep,
            "div": self.scores.div,
            "importance": self.importance,
            "share": self.share,
            "quota": self.quota,
            "selected": self.count,
        }
        return [{"bin": n, **{k: v[n].item() for k, v in columns.items()}} for n in range(len(self.quota))]


def select(
    bins: Tensor,
    labels: Tensor,
    texture: Tensor | None = None,
    view_sum: Tensor | None = None,
    *,
    sums: BinSums | None = None,
    num_bins: int,
    rho: float,
    alpha: float,
    sampler: Sampler = "adq",
    seed: int = 0,
) -> Selection:
    """Choose samples from their bins: ADQ (global budget over scored bins), DQ (rho per cell) or random.

    bins and labels (n,) int; the bins' scores from per-sample texture (n,) and view_sum (n, d) as in
    `bin_scores`, or from their per-bin `sums` (what the bins stage stores: no per-sample vector). Re-run freely for
    other rho / alpha / sampler: nothing here re-embeds or re-bins. `quota` is the sampler's per-bin
    target (for "random", the per-bin count it happened to draw).
    """
    _check(bins, labels, num_bins, rho, alpha, sampler, seed)
    bins, labels = bins.cpu().long(), labels.cpu().long()
    scores = _scores(bins, texture, view_sum, sums, num_bins)
    weight = importance(scores.rep, scores.div)
    share = shares(weight, scores.size, alpha)
    classes, cells = cell_sizes(bins, labels, num_bins)
    if sampler == "random":
        selected = uniform_selection(len(bins), rho, seed=seed)
        quota = torch.bincount(bins[selected], minlength=num_bins)
    else:
        if sampler == "adq":
            bin_quotas = adq_bin_quotas(scores.size, scores.rep, scores.div, rho=rho, alpha=alpha)
            counts = split_over_classes(bin_quotas, cells, seed=seed)
            _warn_starved(classes, counts, bin_quotas, cells)
        else:
            counts = dq_cell_counts(cells, rho)
            _check_dq_total(int(counts.sum()), len(bins), rho)
        selected = draw(bins, labels, counts, classes, seed=seed)
        quota = counts.sum(1)
    count = torch.bincount(bins[selected], minlength=num_bins)
    return Selection(selected=selected, scores=scores, importance=weight, share=share, quota=quota, count=count)


def class_count_summary(labels: Tensor, selected: Tensor) -> dict[str, int]:
    """Selected images per class (labels (n,), selected (n,) bool): classes, min, max, classes with zero."""
    _, index = torch.unique(labels, return_inverse=True)
    per_class = torch.bincount(index[selected], minlength=int(index.max()) + 1 if len(index) else 0)
    if not len(per_class):
        return {"classes": 0, "min": 0, "max": 0, "zero": 0}
    return {
        "classes": len(per_class),
        "min": int(per_class.min()),
        "max": int(per_class.max()),
        "zero": int((per_class == 0).sum()),
    }


def _check_dq_total(total: int, n: int, rho: float) -> None:
    """DQ's per-cell rounding: an error when it keeps nothing, a warning when it drifts > 5% from rho * n."""
    from adq_ray.errors import InputError

    if total == 0:
        raise InputError(
            f"sampler dq keeps no image at rho={rho}: every (bin, class) cell rounds rho * size to 0 "
            f"(round half to even, as DQ's code); raise rho, lower num_bins, or use sampler adq (one global budget)"
        )
    target = rho * n
    if abs(total - target) > 0.05 * target:
        log.warning(
            "sampler dq keeps %d of %d images (achieved ratio %.4f against rho %.4f, %+.1f%%): it rounds rho * size "
            "in every (bin, class) cell, which drifts when cells are small; sampler adq with alpha 0 gives DQ's "
            "proportional quotas at exactly floor(rho * n + 0.5) images",
            total,
            n,
            total / n,
            rho,
            100 * (total - target) / target,
        )


def _warn_starved(classes: Tensor, counts: Tensor, quotas: Tensor, cells: Tensor) -> None:
    """Log the classes the ADQ sampler gives no image (ideal share t_c < 1, rounded down), with their t_c."""
    zero = torch.nonzero(counts.sum(0) == 0).squeeze(1)
    ideal = (quotas.double()[:, None] * cells / cells.sum(1, keepdim=True).clamp_min(1)).sum(0)
    zero = zero[ideal[zero] > 0]
    if len(zero):
        listed = ", ".join(f"{int(classes[k])} ({float(ideal[k]):.3g})" for k in zero[:20])
        more = f" and {len(zero) - 20} more" if len(zero) > 20 else ""
        log.warning(
            "adq sampler: %d class(es) get no image, their ideal share (in images) being below one: %s%s; "
            "raise rho to keep them",
            len(zero),
            listed,
            more,
        )


def _scores(
    bins: Tensor, texture: Tensor | None, view_sum: Tensor | None, sums: BinSums | None, num_bins: int
) -> BinScores:
    """Bin scores from per-sample texture and view sums, or from per-bin sums that must count `bins` exactly."""
    if (sums is None) == (texture is None or view_sum is None):
        raise ValueError("give either texture and view_sum (per sample) or sums (per bin), not both or neither")
    if sums is None:
        return bin_scores(bins, texture.cpu(), view_sum.cpu(), num_bins)
    if not torch.equal(sums.count.cpu(), torch.bincount(bins, minlength=num_bins)):
        raise ValueError("the per-bin sums do not count the same samples as bins: delete the bins cache and re-run")
    return bin_scores_from_sums(sums)


def _check(bins: Tensor, labels: Tensor, num_bins: int, rho: float, alpha: float, sampler: str, seed: int) -> None:
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if sampler not in ("adq", "dq", "random"):
        raise ValueError(f"sampler must be 'adq', 'dq' or 'random', got {sampler!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if bins.ndim != 1 or labels.shape != bins.shape:
        raise ValueError(f"bins and labels must both be (n,), got {tuple(bins.shape)} and {tuple(labels.shape)}")
    for name, values in (("bins", bins), ("labels", labels)):
        if values.is_floating_point() or values.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got {values.dtype}")
    if len(bins) == 0:
        raise ValueError("no samples to select from")
    if bins.min() < 0 or bins.max() >= num_bins:
        raise ValueError(f"bins must be in [0, {num_bins}), got [{int(bins.min())}, {int(bins.max())}]")
    if labels.min() < 0:
        raise ValueError("labels must be >= 0 (they seed the draws)")
