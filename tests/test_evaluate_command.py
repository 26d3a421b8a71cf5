"""`adq evaluate` end to end on a CIFAR-10 slice: compressed arms at equal budgets plus full data, on real Ray Train."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from util import CIFAR_TAR

from adq_ray.cli import build_config, main, parser
from adq_ray.errors import InputError
from adq_ray.evaluate.arms import data_keys
from adq_ray.ingest.cifar import extract_cifar_subset
from adq_ray.layout import Layout
from adq_ray.quotas.adq import budget
from adq_ray.quotas.selection import select


def test_evaluate_trains_every_arm_and_reports(ray_session, tmp_path):
    train = extract_cifar_subset(CIFAR_TAR, tmp_path / "train", per_class=12, split="train")
    test = extract_cifar_subset(CIFAR_TAR, tmp_path / "test", per_class=4, split="test")
    out = tmp_path / "eval"
    argv = [
        "evaluate", "--input", str(train), "--output", str(out), "--test", str(test),
        "--epochs", "1", "--model", "cifar_resnet20", "--train-batch-size", "32",
        "--image-size", "32", "--backbone", "cifar_resnet20", "--backbone-weights", "random",
        "--cam-model", "cifar_resnet20", "--cam-weights", "random", "--cam-layer", "layer3",
        "--patch-image-size", "64", "--num-bins", "3", "--rho", "0.25", "--batch-size", "32", "--resume",
    ]  # fmt: skip
    assert main(argv) == 0
    table = (out / "evaluation" / "evaluation.json").read_text()
    rows = {r["arm"]: r for r in json.loads(table)}
    assert set(rows) == {"full", "random", "dq", "adq", "dq-cell"}
    assert rows["full"]["n_train"] == 120
    # Equal budgets: random, DQ (DQ's bins, alpha 0, one global budget) and ADQ train on B images each.
    assert rows["adq"]["n_train"] == rows["dq"]["n_train"] == rows["random"]["n_train"] == budget(120, 0.25)
    # DQ's literal per-cell sampler is reported apart, with the count and ratio it achieved.
    assert rows["dq-cell"]["sample_ratio"] == rows["dq-cell"]["n_train"] / 120
    assert all(0.0 <= r["final_acc"] <= 1.0 and 0.0 <= r["best_acc"] <= 1.0 for r in rows.values())
    # One embedding and binning served all three samplers.
    embeds = [p for p in (out / "_stages").iterdir() if p.name.startswith("embed-") and ".tmp-" not in p.name]
    assert len(embeds) == 1
    html = (out / "adq" / "report" / "report.html").read_text()
    assert "accuracy.png" in html and all(arm in html for arm in rows)
    # --resume: a rerun reads every finished (arm, seed) run back (same wall_s: nothing trained again) ...
    runs = sorted(p.name for p in (out / "train").iterdir())
    assert len(runs) == 5 and all((out / "train" / run / "adq-result.json").exists() for run in runs)
    assert main(argv) == 0
    assert (out / "evaluation" / "evaluation.json").read_text() == table
    assert sorted(p.name for p in (out / "train").iterdir()) == runs
    # ... and any change to the data trains afresh: it changes the arm's key, so its runs' names.
    config = build_config(parser().parse_args(argv))
    names = ["full", "random", "dq", "adq", "dq-cell"]
    keys = data_keys(config, Layout(config), names, "test", "")
    assert len(set(keys.values())) == 5 and keys == data_keys(config, Layout(config), names, "test", "")
    assert data_keys(config, Layout(config), names, "other test", "")["adq"] != keys["adq"]
    assert data_keys(config, Layout(config), names, "test", "mae:w.pth")["full"] != keys["full"]
    next((train / "airplane").iterdir()).unlink()  # a new input listing: the full arm's data changed
    assert data_keys(config, Layout(config), names, "test", "")["full"] != keys["full"]


def test_dq_sampler_warns_on_drift_and_refuses_an_empty_selection(caplog):
    """DQ's per-cell rounding: 4-image cells at rho 0.3 keep 1 each (25%, not 30%); at rho 0.1 they keep none."""
    bins = torch.arange(120) % 3
    labels = (torch.arange(120) // 3) % 10  # 30 cells of 4
    texture, view_sum = torch.rand(120, dtype=torch.float64), torch.randn(120, 8, dtype=torch.float64)
    common = {"num_bins": 3, "alpha": 0.7, "sampler": "dq", "seed": 0}
    with caplog.at_level(logging.WARNING, logger="adq_ray"):
        drifted = select(bins, labels, texture, view_sum, rho=0.3, **common)
    assert int(drifted.selected.sum()) == 30 and budget(120, 0.3) == 36
    assert "achieved ratio 0.2500" in caplog.text and "cell" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="adq_ray"):
        select(bins, labels, texture, view_sum, rho=0.5, **common)  # round-half-even(2.0) = 2: exact, no warning
    assert "achieved ratio" not in caplog.text
    with pytest.raises(InputError, match="keeps no image at rho=0.1"):
        select(bins, labels, texture, view_sum, rho=0.1, **common)
    # At alpha 0 the global-budget sampler keeps exactly B where DQ's rounding keeps nothing.
    assert (
        int(
            select(
                bins, labels, texture, view_sum, rho=0.1, **{**common, "sampler": "adq", "alpha": 0.0}
            ).selected.sum()
        )
        == 12
    )


def test_zero_budget_is_a_one_line_error(ray_session, tmp_path, capsys):
    train = extract_cifar_subset(CIFAR_TAR, tmp_path / "train", per_class=2, split="train")
    argv = ["compress", "--input", str(train), "--output", str(tmp_path / "out"), "--rho", "0.01", "--until", "select"]
    argv += ["--image-size", "32", "--backbone", "cifar_resnet20", "--backbone-weights", "random", "--num-bins", "1"]
    argv += ["--cam-model", "cifar_resnet20", "--cam-weights", "random", "--cam-layer", "layer3"]  # nothing downloads
    argv += ["--cam-weights", "random"]  # offline: `hub` weights would stop the run before any stage
    assert main(argv) == 2  # 20 images at rho 0.01: B = floor(0.2 + 0.5) = 0
    assert "budget of 0 images" in capsys.readouterr().err
