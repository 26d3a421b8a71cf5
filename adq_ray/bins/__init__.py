"""DQ bin generation: similarities, greedy GraphCut bins batched over classes, k-means split of large classes."""

from adq_ray.bins.graphcut import Bins, assign_bins, bin_sizes, graphcut_bins
from adq_ray.bins.grouping import balanced_assign, group_sizes, split_groups
from adq_ray.bins.similarity import cosine, gradient_cosine, similarity

__all__ = [
    "Bins",
    "assign_bins",
    "balanced_assign",
    "bin_sizes",
    "cosine",
    "gradient_cosine",
    "graphcut_bins",
    "group_sizes",
    "similarity",
    "split_groups",
]
