"""Scores, quotas and draws against plain-Python references, plus budget and reproducibility invariants."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import reference
import torch

from adq_ray.quotas import (
    adq_bin_quotas,
    bin_scores,
    budget,
    cell_sizes,
    dq_cell_counts,
    draw,
    importance,
    largest_remainder,
    select,
    split_over_classes,
)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def _dataset(n: int, classes: int, num_bins: int, seed: int):
    """Random bins (every bin non-empty), labels, texture and view sums of unit views."""
    g = torch.Generator().manual_seed(seed)
    bins = torch.cat([torch.arange(num_bins), torch.randint(0, num_bins, (n - num_bins,), generator=g)])
    labels = torch.randint(0, classes, (n,), generator=g)
    texture = torch.rand(n, generator=g, dtype=torch.float64)
    view1 = _unit(torch.randn(n, 6, generator=g, dtype=torch.float64) + 1)
    view2 = _unit(view1 + 0.5 * torch.randn(n, 6, generator=g, dtype=torch.float64))
    return bins, labels, texture, view1, view2


def test_bin_scores_equal_explicit_pairs():
    bins, _, texture, view1, view2 = _dataset(60, 1, 5, 0)
    scores = bin_scores(bins, texture, view1 + view2, 5)
    rep, div = reference.bin_scores(bins.numpy(), texture.numpy(), view1.numpy(), view2.numpy(), 5)
    assert scores.size.tolist() == torch.bincount(bins).tolist()
    np.testing.assert_allclose(scores.rep.numpy(), rep, rtol=1e-12)
    np.testing.assert_allclose(scores.div.numpy(), div, rtol=1e-12)


def test_largest_remainder_equals_literal_round_robin():
    rng = np.random.default_rng(1)
    for _ in range(300):
        k = int(rng.integers(1, 8))
        capacity = rng.integers(0, 30, k)
        floors = rng.integers(0, 40, k)  # floors above capacity: overflow
        remainders = rng.integers(0, 4, k).astype(float) / 4  # many equal remainders: ties
        total = int(rng.integers(int(np.minimum(floors, capacity).sum()), capacity.sum() + 1))
        got = largest_remainder(torch.tensor(floors), torch.tensor(remainders), torch.tensor(capacity), total)
        assert got.tolist() == reference.apportion(floors.tolist(), remainders.tolist(), capacity.tolist(), total)


def test_adq_quotas_sum_to_the_budget():
    rng = np.random.default_rng(2)
    for case in range(400):
        num_bins = int(rng.integers(1, 12))
        sizes = rng.integers(1, 200, num_bins)
        rep, div = rng.random(num_bins) + 0.01, rng.random(num_bins) + 0.01
        if case % 4 == 0:  # overflow: a tiny bin with nearly all the importance
            sizes[0], rep[0], div[0] = 1, 1e6, 1e6
        rho, alpha = float(rng.choice([rng.random(), 1.0, 1e-3])), float(rng.choice([rng.random(), 0.0, 1.0]))
        rho = max(rho, 1e-3)
        quotas = adq_bin_quotas(torch.tensor(sizes), torch.tensor(rep), torch.tensor(div), rho=rho, alpha=alpha)
        assert int(quotas.sum()) == budget(int(sizes.sum()), rho) == math.floor(rho * sizes.sum() + 0.5)
        assert (quotas >= 0).all() and (quotas <= torch.tensor(sizes)).all()
        assert quotas.tolist() == reference.adq_bin_quotas(sizes.tolist(), rep.tolist(), div.tolist(), rho, alpha)


def test_split_over_classes_is_exact_largest_remainder():
    rng = np.random.default_rng(3)
    for _ in range(100):
        cells = torch.tensor(rng.integers(0, 50, (4, 5)))
        cells[:, 0] += 1
        quotas = torch.tensor([int(rng.integers(0, int(s) + 1)) for s in cells.sum(1)])
        split = split_over_classes(quotas, cells)
        assert torch.equal(split.sum(1), quotas) and (split <= cells).all()
        for n in range(4):
            exact = [Fraction(int(c) * int(quotas[n]), int(cells[n].sum())) for c in cells[n]]
            floors = [math.floor(e) for e in exact]
            expected = reference.apportion(
                floors, [e - f for e, f in zip(exact, floors)], cells[n].tolist(), int(quotas[n])
            )
            assert split[n].tolist() == expected


@pytest.mark.parametrize("rho", [0.125, 0.25, 0.375, 0.5, 1.0])
def test_alpha_zero_adq_equals_dq_where_rho_cell_is_integer(rho):
    cells = torch.tensor(np.random.default_rng(4).integers(1, 30, (10, 7)) * 8)
    sizes = cells.sum(1)
    rep, div = torch.rand(10, dtype=torch.float64) + 0.1, torch.rand(10, dtype=torch.float64) + 0.1
    adq = split_over_classes(adq_bin_quotas(sizes, rep, div, rho=rho, alpha=0.0), cells)
    assert torch.equal(adq, dq_cell_counts(cells, rho))
    assert torch.equal(dq_cell_counts(cells, rho), (cells * rho).long())


def test_dq_rounds_half_to_even():
    assert dq_cell_counts(torch.tensor([[4, 12, 20, 7]]), 0.125).tolist() == [[0, 2, 2, 1]]


def test_draw_takes_the_counts_and_depends_only_on_its_cell():
    bins, labels, *_ = _dataset(300, 4, 5, 5)
    classes, cells = cell_sizes(bins, labels, 5)
    counts = cells // 3
    selected = draw(bins, labels, counts, classes, seed=7)
    for n in range(5):
        for k, c in enumerate(classes.tolist()):
            assert int(selected[(bins == n) & (labels == c)].sum()) == int(counts[n, k])
    only = labels == 2  # the same cells, with every other class removed
    sub_classes, _ = cell_sizes(bins[only], labels[only], 5)
    alone = draw(bins[only], labels[only], counts[:, 2:3], sub_classes, seed=7)
    assert torch.equal(alone, selected[only])
    assert not torch.equal(draw(bins, labels, counts, classes, seed=8), selected)


@pytest.mark.parametrize("sampler", ["adq", "dq", "random"])
def test_select_is_seeded_and_meets_its_budget(sampler):
    bins, labels, texture, view1, view2 = _dataset(400, 3, 10, 6)
    kwargs = dict(num_bins=10, rho=0.2, alpha=0.7, sampler=sampler)
    a = select(bins, labels, texture, view1 + view2, seed=1, **kwargs)
    b = select(bins, labels, texture, view1 + view2, seed=1, **kwargs)
    c = select(bins, labels, texture, view1 + view2, seed=2, **kwargs)
    assert torch.equal(a.selected, b.selected) and not torch.equal(a.selected, c.selected)
    assert torch.equal(a.count, torch.bincount(bins[a.selected], minlength=10))
    if sampler == "dq":
        assert int(a.selected.sum()) == int(dq_cell_counts(cell_sizes(bins, labels, 10)[1], 0.2).sum())
    else:
        assert int(a.selected.sum()) == budget(400, 0.2) == 80
    if sampler != "random":
        assert torch.equal(a.quota, a.count)
    rows = json.loads(json.dumps(a.table()))
    assert [r["bin"] for r in rows] == list(range(10)) and sum(r["selected"] for r in rows) == int(a.selected.sum())
    assert sum(r["importance"] for r in rows) == pytest.approx(1) and sum(r["share"] for r in rows) == pytest.approx(1)


def test_full_ratio_keeps_everything():
    bins, labels, texture, view1, view2 = _dataset(120, 3, 4, 7)
    for sampler in ("adq", "dq", "random"):
        s = select(bins, labels, texture, view1 + view2, num_bins=4, rho=1.0, alpha=0.5, sampler=sampler, seed=0)
        assert bool(s.selected.all())


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(rho=0.0), "rho"),
        (dict(rho=1.5), "rho"),
        (dict(alpha=-0.1), "alpha"),
        (dict(alpha=1.1), "alpha"),
        (dict(sampler="kmeans"), "sampler"),
        (dict(seed=-1), "seed"),
        (dict(num_bins=3), "bins must be in"),
        (dict(texture=torch.full((50,), float("nan"))), "NaN"),
        (dict(view_sum=torch.ones(49, 6)), "view_sum"),
        (dict(labels=torch.zeros(49, dtype=torch.long)), "bins and labels"),
        (dict(labels=torch.zeros(50)), "integer"),
        (dict(labels=torch.full((50,), -1)), "labels must be >= 0"),
    ],
)
def test_bad_arguments_raise(change, match):
    bins, labels, texture, view1, view2 = _dataset(50, 2, 5, 8)
    args = dict(
        bins=bins,
        labels=labels,
        texture=texture,
        view_sum=view1 + view2,
        num_bins=5,
        rho=0.1,
        alpha=0.5,
        sampler="adq",
        seed=0,
    )
    args.update(change)
    with pytest.raises(ValueError, match=match):
        select(**args)


def test_flat_images_weigh_bins_equally_on_rep():
    rep, div = torch.zeros(4, dtype=torch.float64), torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert importance(rep, div).tolist() == pytest.approx([(0.25 + d / 10) / 2 for d in (1, 2, 3, 4)])
    assert int(adq_bin_quotas(torch.tensor([5, 5, 5, 5]), rep, div, rho=0.5, alpha=1.0).sum()) == 10


def test_empty_bin_raises():
    bins = torch.tensor([0, 0, 2, 2])
    with pytest.raises(ValueError, match="at least one sample"):
        bin_scores(bins, torch.ones(4), torch.ones(4, 3), 3)
