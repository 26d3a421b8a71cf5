"""Scores, quotas and draws against plain-Python references, plus budget and reproducibility invariants."""

from __future__ import annotations

import json
import logging
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
    """Against an exact-rational reference (tests/reference.py builds the ideal in Fractions, not floats).

    Planted bug caught: deciding the remainders in float64 (the old `ideal - ideal.floor()`), which hands
    exact ties such as 1/3, 1/3, 7/3 to a higher bin; the tie cases below make it fail.
    """
    rng = np.random.default_rng(2)
    for case in range(400):
        num_bins = int(rng.integers(1, 12))
        sizes = rng.integers(1, 200, num_bins)
        rep, div = rng.random(num_bins) + 0.01, rng.random(num_bins) + 0.01
        if case % 4 == 0:  # overflow: a tiny bin with nearly all the importance
            sizes[0], rep[0], div[0] = 1, 1e6, 1e6
        if case % 4 == 1:  # exact ties: equal scores, alpha 0, sizes with equal fractional shares
            sizes = rng.choice([1, 1, 4, 7], num_bins)
            rep, div = np.ones(num_bins), np.ones(num_bins)
        rho, alpha = float(rng.choice([rng.random(), 1.0, 1e-3, 1 / 3])), float(rng.choice([rng.random(), 0.0, 1.0]))
        rho = max(rho, 1e-3)
        quotas = adq_bin_quotas(torch.tensor(sizes), torch.tensor(rep), torch.tensor(div), rho=rho, alpha=alpha)
        assert int(quotas.sum()) == budget(int(sizes.sum()), rho) == math.floor(rho * sizes.sum() + 0.5)
        assert (quotas >= 0).all() and (quotas <= torch.tensor(sizes)).all()
        assert quotas.tolist() == reference.adq_bin_quotas(sizes.tolist(), rep.tolist(), div.tolist(), rho, alpha)


def test_exact_ties_go_to_the_lower_bin():
    """Ideals 1/3, 1/3, 7/3 are an exact three-way tie: the lowest bin gets the spare image (spec section 4).

    Planted bug caught: float remainders (7/3 - 2 rounds above 1/3 in float64), which gave [0, 0, 3].
    """
    quotas = adq_bin_quotas(torch.tensor([1, 1, 7]), torch.ones(3), torch.ones(3), rho=1 / 3, alpha=0)
    assert quotas.tolist() == [1, 0, 2]
    rep = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float32)  # float32 scores: still exact
    assert adq_bin_quotas(torch.tensor([5, 5, 5]), rep, rep, rho=0.2, alpha=1.0).tolist() == [1, 1, 1]


def _check_rounding(quotas: torch.Tensor, cells: torch.Tensor, counts: torch.Tensor) -> None:
    """Rows exact, every cell floor/ceil of its ideal (so within its size), class totals floor/ceil of t_c."""
    q, c, out = quotas.tolist(), cells.tolist(), counts.tolist()
    for n in range(len(q)):
        assert sum(out[n]) == q[n]
        for k in range(len(c[n])):
            ideal = Fraction(q[n] * c[n][k], sum(c[n])) if sum(c[n]) else Fraction(0)
            assert out[n][k] in (math.floor(ideal), math.ceil(ideal)) and 0 <= out[n][k] <= c[n][k]
    for k in range(len(c[0])):
        t = sum((Fraction(q[n] * c[n][k], sum(c[n])) for n in range(len(q)) if sum(c[n])), Fraction(0))
        assert sum(out[n][k] for n in range(len(q))) in (math.floor(t), math.ceil(t))


def test_controlled_rounding_equals_brute_force():
    """Small random (bin x class) matrices against every floor/ceil choice, enumerated (tests/reference.py).

    Planted bugs caught: rounding bin by bin (class totals leave floor/ceil), and taking the up-classes in
    index order instead of largest fractional part first (feasible, but not the preferred rounding).
    """
    rng = np.random.default_rng(3)
    checked = 0
    for case in range(200):
        rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 6))
        cells = torch.tensor(rng.integers(0, 7, (rows, cols)))
        cells[:, 0] += 1
        quotas = torch.tensor([int(rng.integers(0, int(s) + 1)) for s in cells.sum(1)])
        if (cells * quotas[:, None] % cells.sum(1, keepdim=True)).ne(0).sum() > 12:
            continue  # too many fractional cells to enumerate
        split = split_over_classes(quotas, cells, seed=case)
        _check_rounding(quotas, cells, split)
        tie_rank = np.random.default_rng([case, 4]).permutation(cols).tolist()  # the project's seeded permutation
        assert tuple(split.sum(0).tolist()) in reference.controlled_rounding(quotas.tolist(), cells.tolist(), tie_rank)
        checked += 1
    assert checked > 100


def test_controlled_rounding_holds_on_large_random_matrices():
    """10 bins x 1000 classes of uneven cells: rows exact, cells and class totals floor/ceil (exact check)."""
    rng = np.random.default_rng(15)
    cells = torch.tensor(rng.integers(0, 40, (10, 1000)) * rng.integers(0, 2, (10, 1000)))
    cells[:, 0] += 1
    for rho in (0.03, 0.1, 0.37):
        quotas = (cells.sum(1) * rho).long()
        _check_rounding(quotas, cells, split_over_classes(quotas, cells, seed=1))


@pytest.mark.parametrize("rho", [0.05, 0.1, 0.2, 0.3])
@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_no_class_starves_on_202_classes_of_50(rho, alpha):
    """202 classes x 50 images in 10 bins: every class within one image of its ideal t_c, every bin exact.

    Planted bug caught: the old bin-by-bin largest remainder with ties to the lower class, which gave
    classes 0-99 ten images and classes 102-201 none at rho 0.1.
    """
    g = torch.Generator().manual_seed(14)
    labels = torch.arange(202).repeat_interleave(50)
    bins = torch.cat([torch.randperm(50, generator=g) % 10 for _ in range(202)])  # 5 per (bin, class) cell
    texture = torch.rand(len(bins), generator=g, dtype=torch.float64)
    views = _unit(torch.randn(len(bins), 4, generator=g, dtype=torch.float64) + 1)
    s = select(bins, labels, texture, 2 * views, num_bins=10, rho=rho, alpha=alpha, seed=3)
    per_class = torch.bincount(labels[s.selected], minlength=202)
    quotas = reference.adq_bin_quotas([1010] * 10, s.scores.rep.tolist(), s.scores.div.tolist(), rho, alpha)
    ideal = float(sum(Fraction(q * 5, 1010) for q in quotas))  # the same for every class
    assert (per_class.double() - ideal).abs().max() < 1
    assert s.count.tolist() == quotas and int(s.selected.sum()) == math.floor(rho * 10100 + 0.5)


def test_rounding_ties_follow_a_seeded_permutation_of_the_classes():
    """Identical classes tie exactly: which get the spare image depends on the seed, never on the index.

    Planted bug caught: breaking ties by class index (the classes getting the spare are always 0..k-1).
    """
    cells = torch.ones(3, 12, dtype=torch.long)
    quotas = torch.tensor([2, 2, 2])  # t_c = 1/2 for every class: 6 of the 12 get one image
    ups = {tuple(split_over_classes(quotas, cells, seed=s).sum(0).tolist()) for s in range(8)}
    assert len(ups) > 1 and (1,) * 6 + (0,) * 6 not in ups
    assert all(sum(u) == 6 for u in ups)
    assert torch.equal(split_over_classes(quotas, cells, seed=5), split_over_classes(quotas, cells, seed=5))


def test_starved_classes_are_named_in_a_warning(caplog):
    """Tiny classes whose ideal share is below one image may get none; the warning names those that do.

    Planted bug caught: a warning that never fires, or names the wrong classes.
    """
    labels = torch.cat([torch.zeros(200, dtype=torch.long), torch.tensor([7, 8] * 5)])
    bins = torch.arange(210) % 5
    texture, views = torch.ones(210, dtype=torch.float64), torch.ones(210, 3, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="adq_ray"):
        s = select(bins, labels, texture, views, num_bins=5, rho=0.05, alpha=0.0, seed=0)
    kept = torch.bincount(labels[s.selected], minlength=9)
    zero = [c for c in (7, 8) if kept[c] == 0]
    assert zero, "setup: at least one tiny class rounds to zero"
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "get no image" in message and all(f"{c} (" in message for c in zero) and "0 (" not in message


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
    """Per-cell counts of the selected samples against references computed here, not by `select`'s helpers.

    adq: bin totals equal reference.adq_bin_quotas on reference.bin_scores, cells floor/ceil of their ideal;
    dq: every cell Python's round(rho * cell), as DQ's code; random: exactly floor(rho n + 0.5).
    Planted bugs caught: dq_cell_counts with floor instead of round-half-even; `draw` taking q - 1 from
    each non-empty cell; select passing alpha=0 to the quotas.
    """
    bins, labels, texture, view1, view2 = _dataset(400, 3, 10, 6)
    kwargs = dict(num_bins=10, rho=0.2, alpha=0.7, sampler=sampler)
    a = select(bins, labels, texture, view1 + view2, seed=1, **kwargs)
    b = select(bins, labels, texture, view1 + view2, seed=1, **kwargs)
    c = select(bins, labels, texture, view1 + view2, seed=2, **kwargs)
    assert torch.equal(a.selected, b.selected) and not torch.equal(a.selected, c.selected)
    cells = [[int(((bins == n) & (labels == k)).sum()) for k in range(3)] for n in range(10)]
    chosen = [[int(((bins == n) & (labels == k) & a.selected).sum()) for k in range(3)] for n in range(10)]
    if sampler == "adq":
        rep, div = reference.bin_scores(bins.numpy(), texture.numpy(), view1.numpy(), view2.numpy(), 10)
        quotas = reference.adq_bin_quotas([sum(row) for row in cells], rep.tolist(), div.tolist(), 0.2, 0.7)
        _check_rounding(torch.tensor(quotas), torch.tensor(cells), torch.tensor(chosen))
        assert a.quota.tolist() == a.count.tolist() == quotas
    elif sampler == "dq":
        assert chosen == [[round(0.2 * cell) for cell in row] for row in cells]
    assert int(a.selected.sum()) == (sum(map(sum, chosen)) if sampler == "dq" else math.floor(0.2 * 400 + 0.5))
    assert a.count.tolist() == [sum(row) for row in chosen]
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
