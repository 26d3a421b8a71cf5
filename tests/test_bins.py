"""Bin generation against the slow float64 reference, plus partition / size / split invariants."""

from __future__ import annotations

import numpy as np
import pytest
import reference
import torch

from adq_ray.bins import assign_bins, balanced_assign, bin_sizes, cosine, gradient_cosine, split_groups


def _data(sizes: list[int], dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features for classes of the given sizes, samples of all classes interleaved."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    labels = labels[torch.randperm(len(labels), generator=g)]
    return torch.randn(len(labels), dim, generator=g, dtype=torch.float64), labels


def test_cosine_matches_definition():
    x = torch.randn(9, 5, dtype=torch.float64)
    np.testing.assert_allclose(cosine(x).numpy(), reference.cosine_matrix(x.numpy()), atol=1e-12)


def test_gradient_cosine_equals_materialised_features():
    g = torch.Generator().manual_seed(1)
    e, grads = (
        torch.randn(2, 11, 6, generator=g, dtype=torch.float64),
        torch.randn(2, 11, 4, generator=g, dtype=torch.float64),
    )
    for b in range(2):
        expected = reference.cosine_matrix(reference.gradient_features(e[b].numpy(), grads[b].numpy()))
        np.testing.assert_allclose(gradient_cosine(e, grads)[b].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize(
    "sizes,num_bins,dim,seed",
    [([12], 3, 4, 0), ([40, 40, 40], 10, 8, 1), ([57, 23, 31, 10], 10, 16, 2), ([35, 36], 1, 5, 3), ([20, 9], 4, 3, 4)],
)
def test_bins_equal_reference(sizes, num_bins, dim, seed):
    features, labels = _data(sizes, dim, seed)
    bins = assign_bins(features, labels, num_bins, dtype=torch.float64)
    expected_bins, expected_ranks = reference.assign_bins(features.numpy(), labels.numpy(), num_bins)
    np.testing.assert_array_equal(bins.bin.numpy(), expected_bins)
    np.testing.assert_array_equal(bins.rank.numpy(), expected_ranks)


def test_gradient_mode_equals_reference_on_materialised_features():
    e, labels = _data([25, 18], 5, 5)
    grads = torch.randn(len(e), 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    bins = assign_bins(e, labels, 5, grads=grads, dtype=torch.float64)
    expected, _ = reference.assign_bins(reference.gradient_features(e.numpy(), grads.numpy()), labels.numpy(), 5)
    np.testing.assert_array_equal(bins.bin.numpy(), expected)


def test_exact_ties_go_to_the_lowest_id():
    basis = torch.eye(4)
    features = basis[torch.tensor([2, 0, 2, 1, 0, 3, 1, 3, 0, 2, 1, 3])]  # duplicates: exactly tied gains
    labels = torch.zeros(12, dtype=torch.long)
    bins = assign_bins(features, labels, 3)
    expected_bins, expected_ranks = reference.assign_bins(features.double().numpy(), labels.numpy(), 3)
    np.testing.assert_array_equal(bins.bin.numpy(), expected_bins)
    np.testing.assert_array_equal(bins.rank.numpy(), expected_ranks)


def test_blocking_does_not_change_the_result():
    features, labels = _data([50, 31, 44, 12, 50], 8, 7)
    together = assign_bins(features, labels, 6, dtype=torch.float64)
    one_by_one = assign_bins(features, labels, 6, dtype=torch.float64, block_bytes=1)
    assert torch.equal(together.bin, one_by_one.bin) and torch.equal(together.rank, one_by_one.rank)


def test_bins_partition_each_class_with_the_size_schedule():
    sizes = [10, 11, 19, 64, 99, 100, 137]
    features, labels = _data(sizes, 6, 8)
    bins = assign_bins(features.float(), labels, 10)
    for c, size in enumerate(sizes):
        in_class = labels == c
        counts = torch.bincount(bins.bin[in_class], minlength=10).tolist()
        assert counts == reference.bin_size_schedule(size, 10)
        for k in range(10):
            ranks = bins.rank[in_class & (bins.bin == k)].sort().values
            assert torch.equal(ranks, torch.arange(counts[k]))
    assert bin_sizes(torch.tensor(sizes), 10).tolist() == [reference.bin_size_schedule(s, 10) for s in sizes]


def test_split_groups_are_balanced_ascending_and_partition():
    features = torch.randn(1003, 8, generator=torch.Generator().manual_seed(9))
    groups = split_groups(features, 300, seed=1)
    assert sorted(len(g) for g in groups) == [250, 251, 251, 251]
    assert all(torch.equal(g, g.sort().values) for g in groups)
    assert torch.equal(torch.cat(groups).sort().values, torch.arange(1003))
    again = split_groups(features, 300, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(groups, again))


def test_balanced_assign_fills_every_capacity():
    scores = torch.randn(200, 7, generator=torch.Generator().manual_seed(10))
    scores[:, 0] += 5  # everyone prefers column 0
    capacity = torch.tensor([10, 40, 30, 20, 50, 25, 25])
    assign = balanced_assign(scores, capacity)
    assert torch.equal(torch.bincount(assign, minlength=7), capacity)
    top = torch.argsort(scores[:, 0], descending=True)[:10]
    assert torch.equal(assign[top], torch.zeros(10, dtype=torch.long))  # column 0 keeps its best rows


def test_large_class_is_split_into_its_clusters_then_binned():
    g = torch.Generator().manual_seed(11)
    centers = torch.eye(16)[:4] * 10
    cluster = torch.arange(240) % 4
    features = (centers[cluster] + torch.randn(240, 16, generator=g, dtype=torch.float64)).double()
    labels = torch.zeros(240, dtype=torch.long)
    bins = assign_bins(features, labels, 5, max_group=60, dtype=torch.float64)
    for c in range(4):  # well-separated clusters of 60: each is exactly one group
        ids = torch.nonzero(cluster == c).squeeze(1)
        expected_bins, expected_ranks = reference.graphcut_bins(features[ids].numpy(), 5)
        np.testing.assert_array_equal(bins.bin[ids].numpy(), expected_bins)
        np.testing.assert_array_equal(bins.rank[ids].numpy(), expected_ranks)


def test_split_class_still_partitions():
    features, labels = _data([130, 45], 6, 12)
    bins = assign_bins(features.float(), labels, 4, max_group=40, seed=3)
    for c, groups in ((0, 4), (1, 2)):  # 130 -> 4 groups (33, 33, 32, 32); 45 -> 2 (23, 22)
        counts = torch.bincount(bins.bin[labels == c], minlength=4)
        assert int(counts.sum()) == int((labels == c).sum())
        assert torch.bincount(bins.rank[(labels == c) & (bins.bin == 0)]).max() == groups
    assert torch.equal(bins.bin, assign_bins(features.float(), labels, 4, max_group=40, seed=3).bin)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda f, l, g: (f.masked_fill(f > 1.5, float("nan")), l, None), "NaN"),
        (lambda f, l, g: (f, l, g.masked_fill(g > 1.5, float("inf"))), "grads contain"),
        (lambda f, l, g: (f[:0], l[:0], None), "empty"),
        (lambda f, l, g: (f, l[:-1], None), "labels must be"),
        (lambda f, l, g: (f, l.float(), None), "integer"),
        (lambda f, l, g: (f, l - 1, None), ">= 0"),
        (lambda f, l, g: (f, l, g[:-1]), "grads must be"),
        (lambda f, l, g: (f[0], l, None), "features must be"),
        (lambda f, l, g: (f[:14], l[:14], None), "fewer than num_bins"),
    ],
)
def test_bad_inputs_raise(change, match):
    features, labels = _data([20, 20], 4, 13)
    grads = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    f, l, g = change(features, labels, grads)
    with pytest.raises(ValueError, match=match):
        assign_bins(f, l, 10, grads=g)


def test_bad_num_bins_raise():
    features, labels = _data([20], 4, 14)
    with pytest.raises(ValueError, match="num_bins"):
        assign_bins(features, labels, 0)
    with pytest.raises(ValueError, match="max_group"):
        assign_bins(features, labels, 10, max_group=5)
