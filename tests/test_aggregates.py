"""Select from per-cell sums (what the bins stage stores) against the per-sample path, and chunked bins tasks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import reference
import torch

from adq_ray.bins import assign_bins
from adq_ray.bins.remote import bin_classes, chunk_classes, read_bin_sums, run_bins
from adq_ray.quotas import bin_scores, select
from adq_ray.quotas.scores import BinSums, bin_scores_from_sums, bin_sums, cell_sums
from adq_ray.tables import fixed_size_list


def _samples(n: int, classes: int, num_bins: int, seed: int):
    """Random bins (every bin non-empty, bin 0 a single sample), labels with empty (bin, class) cells, unit views."""
    g = torch.Generator().manual_seed(seed)
    bins = torch.cat([torch.arange(num_bins), torch.randint(1, num_bins, (n - num_bins,), generator=g)])
    labels = torch.randint(0, classes, (n,), generator=g) * 3  # sparse label values
    labels[bins == num_bins - 1] = 0  # the last bin holds one class only: the others' cells are empty
    texture = torch.rand(n, generator=g, dtype=torch.float64)
    view1 = torch.nn.functional.normalize(torch.randn(n, 7, generator=g, dtype=torch.float64) + 1, dim=1)
    view2 = torch.nn.functional.normalize(view1 + 0.5 * torch.randn(n, 7, generator=g, dtype=torch.float64), dim=1)
    return bins, labels, texture, view1, view2


def _sums_from_cells(bins, labels, texture, view_sum, num_bins, parts: int, seed: int) -> BinSums:
    """As the driver gets them: samples dealt to `parts` tasks at random, each summing its cells."""
    deal = torch.randint(0, parts, (len(bins),), generator=torch.Generator().manual_seed(seed))
    total = BinSums(torch.zeros(num_bins, dtype=torch.long), torch.zeros(num_bins, dtype=torch.float64), 0)
    for p in range(parts):
        m = deal == p
        if not m.any():
            continue
        cell_bin, _, sums = cell_sums(bins[m], labels[m], texture[m], view_sum[m], num_bins)
        total = total + bin_sums(cell_bin, sums.texture, sums.view, num_bins, counts=sums.count)
    return total


@pytest.mark.parametrize("n,classes,num_bins,parts,seed", [(40, 3, 5, 1, 0), (300, 7, 10, 4, 1), (61, 20, 6, 9, 2)])
def test_scores_from_cell_sums_equal_per_sample_path(n, classes, num_bins, parts, seed):
    bins, labels, texture, view1, view2 = _samples(n, classes, num_bins, seed)
    assert torch.bincount(bins)[0] == 1, "setup: a single-sample bin"
    per_sample = bin_scores(bins, texture, view1 + view2, num_bins)
    sums = _sums_from_cells(bins, labels, texture, view1 + view2, num_bins, parts, seed)
    from_cells = bin_scores_from_sums(sums)
    rep, div = reference.bin_scores(bins.numpy(), texture.numpy(), view1.numpy(), view2.numpy(), num_bins)
    assert from_cells.size.tolist() == per_sample.size.tolist() == torch.bincount(bins).tolist()
    np.testing.assert_allclose(from_cells.rep.numpy(), rep, rtol=1e-12)
    np.testing.assert_allclose(from_cells.div.numpy(), div, rtol=1e-12)
    np.testing.assert_allclose(from_cells.rep.numpy(), per_sample.rep.numpy(), rtol=1e-13)
    np.testing.assert_allclose(from_cells.div.numpy(), per_sample.div.numpy(), rtol=1e-13)
    for sampler in ("adq", "dq", "random"):
        kwargs = dict(num_bins=num_bins, rho=0.3, alpha=0.7, sampler=sampler, seed=3)
        a = select(bins, labels, texture, view1 + view2, **kwargs)
        b = select(bins, labels, sums=sums, **kwargs)
        assert torch.equal(a.selected, b.selected) and torch.equal(a.quota, b.quota)


def test_cell_sums_cover_only_non_empty_cells():
    bins, labels, texture, view1, view2 = _samples(300, 7, 10, 1)
    cell_bin, cell_label, sums = cell_sums(bins, labels, texture, view1 + view2, 10)
    present = {(int(b), int(c)) for b, c in zip(bins, labels)}
    assert {(int(b), int(c)) for b, c in zip(cell_bin, cell_label)} == present
    assert (sums.count > 0).all() and int(sums.count.sum()) == 300
    for b, c, k, t in zip(cell_bin, cell_label, sums.count, sums.texture):
        m = (bins == b) & (labels == c)
        assert int(m.sum()) == int(k) and float(texture[m].sum()) == pytest.approx(float(t), rel=1e-14)


def test_sums_that_miss_samples_are_refused():
    bins, labels, texture, view1, view2 = _samples(40, 3, 5, 0)
    sums = bin_sums(bins[1:], texture[1:], (view1 + view2)[1:], 5)
    with pytest.raises(ValueError, match="do not count the same samples"):
        select(bins, labels, sums=sums, num_bins=5, rho=0.5, alpha=0.5)
    with pytest.raises(ValueError, match="either texture and view_sum"):
        select(bins, labels, texture, view1 + view2, sums=sums, num_bins=5, rho=0.5, alpha=0.5)


def _store(root, sizes: list[int], dim: int, seed: int) -> dict[int, int]:
    """An embedding cache (label=<c>/ Parquet, interleaved sample ids, some rejected rows); returns ok sizes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    labels = labels[rng.permutation(len(labels))]
    n = len(labels)
    centres = rng.normal(size=(len(sizes), dim))
    embedding = (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32)
    status = np.where(rng.random(n) < 0.1, "rejected", "ok")
    table = pa.table(
        {
            "sample_id": np.arange(n, dtype=np.int64),
            "label": labels.astype(np.int64),
            "status": status,
            "texture": rng.random(n).astype(np.float32),
            "embedding": fixed_size_list(embedding),
            "view_sum": fixed_size_list((embedding + rng.normal(size=(n, dim))).astype(np.float32)),
        }
    )
    pads.write_dataset(table, str(root), format="parquet", partitioning=["label"], partitioning_flavor="hive")
    return {c: int(((labels == c) & (status == "ok")).sum()) for c in range(len(sizes))}


def test_bins_task_output_unchanged_by_chunking(tmp_path):
    """A task reading and binning one class at a time gives what binning all its classes in one call gives."""
    sizes = _store(tmp_path / "emb", [30, 45, 12, 60, 25], 6, 0)
    labels = sorted(sizes)
    one_by_one = bin_classes(str(tmp_path / "emb"), labels, sizes, 4, 40, "embedding", 0, chunk_bytes=1)
    at_once = bin_classes(str(tmp_path / "emb"), labels, sizes, 4, 40, "embedding", 0, chunk_bytes=2**30)
    assert len(chunk_classes(sizes, 1)) == 5 and len(chunk_classes(sizes, 10**9)) == 1
    assert one_by_one[0].sort_by("sample_id").equals(at_once[0].sort_by("sample_id"))
    order = [("bin", "ascending"), ("label", "ascending")]
    assert one_by_one[1].sort_by(order).equals(at_once[1].sort_by(order))
    # ... and both equal binning every class in one assign_bins call (the task before chunking).
    table = pq.read_table(tmp_path / "emb", filters=[("status", "=", "ok")]).sort_by("sample_id")
    features = torch.from_numpy(np.stack(table["embedding"].to_numpy(zero_copy_only=False)))
    expected = assign_bins(features, torch.from_numpy(table["label"].to_numpy().astype(np.int64)), 4, max_group=40)
    samples = one_by_one[0].sort_by("sample_id")
    assert samples["sample_id"].to_pylist() == table["sample_id"].to_pylist()
    assert samples["bin"].to_pylist() == expected.bin.tolist()
    assert samples["rank"].to_pylist() == expected.rank.tolist()


def test_run_bins_cells_give_the_per_sample_scores(tmp_path, ray_session):
    sizes = _store(tmp_path / "emb", [30, 45, 12, 60], 5, 1)
    samples, cells = run_bins(str(tmp_path / "emb"), sizes, 4, 40, "embedding", 0, gpus=0)
    pq.write_table(cells, tmp_path / "cells.parquet")
    sums = read_bin_sums(str(tmp_path / "cells.parquet"), 4, batch_rows=3)
    table = pq.read_table(tmp_path / "emb", filters=[("status", "=", "ok")]).sort_by("sample_id")
    assert samples["sample_id"].to_pylist() == table["sample_id"].to_pylist()
    view_sum = torch.from_numpy(np.stack(table["view_sum"].to_numpy(zero_copy_only=False)))
    expected = bin_scores(
        torch.from_numpy(samples["bin"].to_numpy().copy()),
        torch.from_numpy(table["texture"].to_numpy().copy()),
        view_sum,
        4,
    )
    got = bin_scores_from_sums(sums)
    assert got.size.tolist() == expected.size.tolist()
    np.testing.assert_allclose(got.rep.numpy(), expected.rep.numpy(), rtol=1e-12)
    np.testing.assert_allclose(got.div.numpy(), expected.div.numpy(), rtol=1e-12)


def test_bins_task_passes_bins_dtype(tmp_path):
    """Config.bins_dtype reaches the GraphCut inside a bins task (planted bug caught: the task ignoring it).

    On a class of 1,500 samples float32 and float64 similarities break near-ties differently, so the task's
    float64 bins equal assign_bins' float64 bins and differ from its float32 bins.
    """
    sizes = _store(tmp_path / "emb", [1500], 4, 3)
    table = pq.read_table(tmp_path / "emb", filters=[("status", "=", "ok")]).sort_by("sample_id")
    features = torch.from_numpy(np.stack(table["embedding"].to_numpy(zero_copy_only=False)))
    labels = torch.from_numpy(table["label"].to_numpy().astype(np.int64))
    wide = assign_bins(features, labels, 4, dtype="float64").bin.tolist()
    assert wide != assign_bins(features, labels, 4, dtype="float32").bin.tolist()
    samples, _ = bin_classes(str(tmp_path / "emb"), [0], sizes, 4, 20_000, "embedding", 0, dtype="float64")
    assert samples.sort_by("sample_id")["bin"].to_pylist() == wide
