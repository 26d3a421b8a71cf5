"""Which samples to keep: per-bin scores, quotas (ADQ, DQ, random) and the seeded draw."""

from adq_ray.quotas.adq import (
    adq_bin_quotas,
    budget,
    draw,
    importance,
    largest_remainder,
    shares,
    split_over_classes,
    uniform_selection,
)
from adq_ray.quotas.dq import dq_cell_counts
from adq_ray.quotas.scores import BinScores, bin_scores, cell_sizes
from adq_ray.quotas.selection import Selection, select

__all__ = [
    "BinScores",
    "Selection",
    "adq_bin_quotas",
    "bin_scores",
    "budget",
    "cell_sizes",
    "dq_cell_counts",
    "draw",
    "importance",
    "largest_remainder",
    "select",
    "shares",
    "split_over_classes",
    "uniform_selection",
]
