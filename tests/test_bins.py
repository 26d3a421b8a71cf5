"""Bin generation against the slow float64 reference, plus partition / size / split invariants."""

from __future__ import annotations

import numpy as np
import pytest
import reference
import torch

from adq_ray.bins import assign_bins, balanced_assign, bin_sizes, cosine, gradient_cosine, split_groups
from adq_ray.config import Config, ConfigError
from adq_ray.embed.actor import Embedder, dq_logit_gradient


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
    """Classes of different sizes padded into one block, and one block per class, both equal the reference.

    Planted bug caught: padding not masked out of the similarity (padded rows then add to every gain).
    """
    features, labels = _data([30, 21, 34, 12, 30], 8, 7)
    expected_bins, expected_ranks = reference.assign_bins(features.numpy(), labels.numpy(), 6)
    for block_bytes in (None, 1):
        bins = assign_bins(features, labels, 6, dtype=torch.float64, block_bytes=block_bytes)
        np.testing.assert_array_equal(bins.bin.numpy(), expected_bins)
        np.testing.assert_array_equal(bins.rank.numpy(), expected_ranks)


def test_bins_partition_each_class_with_the_size_schedule():
    """Bin sizes per class equal DQ's rule (reference.dq_bin_sizes, DQ's loop literally) and ranks count 0..m-1.

    Planted bug caught: the old per-class rule floor(|U| / (N - k) + 0.5), which differs on these unbalanced
    classes (it ignores the other classes' pools in f_k = round(|D| / N) / |A_k|).
    """
    sizes = [10, 11, 19, 64, 99, 100, 137]
    features, labels = _data(sizes, 6, 8)
    bins = assign_bins(features.float(), labels, 10)
    expected = reference.dq_bin_sizes(labels.tolist(), 10)
    for c, size in enumerate(sizes):
        in_class = labels == c
        counts = torch.bincount(bins.bin[in_class], minlength=10).tolist()
        assert counts == expected[c] and sum(counts) == size
        for k in range(10):
            ranks = bins.rank[in_class & (bins.bin == k)].sort().values
            assert torch.equal(ranks, torch.arange(counts[k]))


@pytest.mark.parametrize(
    "sizes,num_bins",
    [
        ([105], 10),
        ([55], 10),
        ([65], 10),
        ([25, 35], 10),
        ([732, 1300, 901, 1007], 10),
        ([45, 55, 5, 95], 10),
        ([7, 9, 3], 3),
    ],
)
def test_bin_sizes_follow_dqs_rule(sizes, num_bins):
    """`bin_sizes` against DQ's loop run literally in Python floats: unbalanced classes and .5 cases.

    Planted bug caught: the old floor(|U| / (N - k) + 0.5) rule ([11, 10, 11, ...] for one class of 105).
    """
    pool_of = [c for c, s in enumerate(sizes) for _ in range(s)]
    expected = reference.dq_bin_sizes(pool_of, num_bins)
    assert bin_sizes(torch.tensor(sizes), num_bins).tolist() == [expected[c] for c in range(len(sizes))]
    if sizes == [105]:
        assert expected[0] == [10] * 9 + [15]


def test_bin_sizes_are_global_when_classes_are_binned_apart():
    """Binning some classes (as one Ray task does) with `class_sizes` of all gives the same bins as all at once.

    Planted bug caught: f_k computed from the task's own classes only (bin sizes then depend on the task split).
    """
    features, labels = _data([33, 71, 18, 52], 5, 16)
    whole = assign_bins(features, labels, 5, dtype=torch.float64)
    sizes = {c: int((labels == c).sum()) for c in range(4)}
    for part in ([0, 2], [1], [3]):
        mask = torch.isin(labels, torch.tensor(part))
        alone = assign_bins(features[mask], labels[mask], 5, class_sizes=sizes, dtype=torch.float64)
        assert torch.equal(alone.bin, whole.bin[mask]) and torch.equal(alone.rank, whole.rank[mask])
    with pytest.raises(ValueError, match=r"class_sizes\[0\] is 30"):
        assign_bins(features, labels, 5, class_sizes={**sizes, 0: 30})


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
    sizes = reference.dq_bin_sizes(cluster.tolist(), 5)  # f_k over the whole class, applied to each group
    for c in range(4):  # well-separated clusters of 60: each is exactly one group
        ids = torch.nonzero(cluster == c).squeeze(1)
        expected_bins, expected_ranks = reference.graphcut_bins(features[ids].numpy(), sizes[c])
        np.testing.assert_array_equal(bins.bin[ids].numpy(), expected_bins)
        np.testing.assert_array_equal(bins.rank[ids].numpy(), expected_ranks)


def test_split_class_still_partitions():
    """Split classes: each (class, bin) holds, per group, ranks 0..m-1 with m from DQ's rule over all groups.

    130 -> groups (33, 33, 32, 32), 45 -> (23, 22); the reference runs DQ's loop on those six pools.
    Planted bugs caught: f_k computed inside each group alone (A_k = the group), and ranks counted per
    class instead of per group.
    """
    features, labels = _data([130, 45], 6, 12)
    bins = assign_bins(features.float(), labels, 4, max_group=40, seed=3)
    groups = {0: [33, 33, 32, 32], 1: [23, 22]}
    pool_of = [p for p, size in enumerate(groups[0] + groups[1]) for _ in range(size)]
    sizes = reference.dq_bin_sizes(pool_of, 4)
    first = {0: 0, 1: 4}
    for c, group in groups.items():
        for k in range(4):
            per_group = [sizes[first[c] + g][k] for g in range(len(group))]
            expected = sorted(r for m in per_group for r in range(m))
            assert bins.rank[(labels == c) & (bins.bin == k)].sort().values.tolist() == expected
    assert torch.equal(bins.bin, assign_bins(features.float(), labels, 4, max_group=40, seed=3).bin)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda f, lab, g: (f.masked_fill(f > 1.5, float("nan")), lab, None), "NaN"),
        (lambda f, lab, g: (f, lab, g.masked_fill(g > 1.5, float("inf"))), "grads contain"),
        (lambda f, lab, g: (f[:0], lab[:0], None), "empty"),
        (lambda f, lab, g: (f, lab[:-1], None), "labels must be"),
        (lambda f, lab, g: (f, lab.float(), None), "integer"),
        (lambda f, lab, g: (f, lab - 1, None), ">= 0"),
        (lambda f, lab, g: (f, lab, g[:-1]), "grads must be"),
        (lambda f, lab, g: (f[0], lab, None), "features must be"),
        (lambda f, lab, g: (f[:14], lab[:14], None), "fewer than num_bins"),
    ],
)
def test_bad_inputs_raise(change, match):
    features, labels = _data([20, 20], 4, 13)
    grads = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    f, lab, g = change(features, labels, grads)
    with pytest.raises(ValueError, match=match):
        assign_bins(f, lab, 10, grads=g)


def test_bad_num_bins_raise():
    features, labels = _data([20], 4, 14)
    with pytest.raises(ValueError, match="num_bins"):
        assign_bins(features, labels, 0)
    with pytest.raises(ValueError, match="max_group"):
        assign_bins(features, labels, 10, max_group=5)


def _dq_loss_gradient(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """dL/dz by float64 autograd of DQ's own loss: CrossEntropyLoss(softmax(z), y), summed over the batch."""
    z = logits.detach().double().requires_grad_(True)
    loss = torch.nn.CrossEntropyLoss(reduction="none")(torch.nn.functional.softmax(z, dim=1), labels).sum()
    return torch.autograd.grad(loss, z)[0]


def test_gradient_features_equal_autograd_of_dqs_loss():
    """g = dL/dz with the true label, the loss on softmax outputs (DQ's calc_gradient), in float64.

    Planted bugs caught: the old softmax(z) - onehot(argmax z) (one softmax, predicted class), and the
    true label ignored for labeled data.
    """
    g = torch.Generator().manual_seed(17)
    logits = 3 * torch.randn(64, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (64,), generator=g)
    torch.testing.assert_close(dq_logit_gradient(logits, labels), _dq_loss_gradient(logits, labels), rtol=0, atol=1e-15)
    predicted = _dq_loss_gradient(logits, logits.argmax(1))  # unlabeled data: the predicted class
    torch.testing.assert_close(dq_logit_gradient(logits, None), predicted, rtol=0, atol=1e-15)


def test_embedder_uses_the_true_label_for_gradient_features():
    """The Ray callable passes each row's label: its grad column equals the autograd reference on its own head.

    Planted bug caught: `Embedder.__call__` not passing the batch's labels (the predicted class used instead).
    """
    config = Config(
        input="unused",
        output="unused",
        image_size=32,
        backbone="cifar_resnet20",
        backbone_weights="random",
        contrastive_weights="random",
        features="gradient",
        device="cpu",
    )
    embedder = Embedder(config, num_classes=5)
    rng = np.random.default_rng(18)
    batch = {
        "sample_id": np.arange(6, dtype=np.int64),
        "label": np.array([0, 1, 2, 3, 4, 0], dtype=np.int64),
        "status": np.array(["ok"] * 6, dtype=object),
        "reason": np.array([""] * 6, dtype=object),
        "note": np.array([""] * 6, dtype=object),
        "image": rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
    }
    table = embedder(batch)
    embedding = torch.from_numpy(np.stack(table["embedding"].to_numpy(zero_copy_only=False)))
    grads = torch.from_numpy(np.stack(table["grad"].to_numpy(zero_copy_only=False))).double()
    with torch.no_grad():
        logits = embedder.head(embedding)
    expected = _dq_loss_gradient(logits, torch.from_numpy(batch["label"]))
    torch.testing.assert_close(grads, expected, rtol=1e-4, atol=1e-6)


def test_bins_dtype_option_selects_the_similarity_dtype():
    """Config.bins_dtype reaches assign_bins as a name; float64 by name equals the float64 reference.

    Planted bug caught: the name ignored (float32 always). Pairs of points 1e-9 apart are one point in
    float32 (exact ties: lowest id) but not in float64, where the reference settles them otherwise.
    """
    g = torch.Generator().manual_seed(20)
    base = torch.randn(8, 5, generator=g, dtype=torch.float64)
    features = torch.cat([base, base + 1e-9 * torch.randn(8, 5, generator=g, dtype=torch.float64)])
    labels = torch.zeros(16, dtype=torch.long)
    expected, _ = reference.assign_bins(features.numpy(), labels.numpy(), 4)
    np.testing.assert_array_equal(assign_bins(features, labels, 4, dtype="float64").bin.numpy(), expected)
    assert not np.array_equal(assign_bins(features, labels, 4, dtype="float32").bin.numpy(), expected)
    with pytest.raises(ValueError, match="bins dtype must be 'float32' or 'float64', got 'float16'"):
        assign_bins(features, labels, 10, dtype="float16")
    with pytest.raises(ConfigError, match="bins_dtype must be one of 'float32', 'float64', got 'half'"):
        Config(input="x", output="y", bins_dtype="half")
