"""`adq evaluate` end to end on a CIFAR-10 slice: three compressed arms plus full data, on real Ray Train."""

from __future__ import annotations

import json

from util import CIFAR_TAR

from adq_ray.cli import main
from adq_ray.ingest.cifar import extract_cifar_subset
from adq_ray.quotas.adq import budget


def test_evaluate_trains_every_arm_and_reports(ray_session, tmp_path):
    train = extract_cifar_subset(CIFAR_TAR, tmp_path / "train", per_class=12, split="train")
    test = extract_cifar_subset(CIFAR_TAR, tmp_path / "test", per_class=4, split="test")
    out = tmp_path / "eval"
    argv = [
        "evaluate", "--input", str(train), "--output", str(out), "--test", str(test),
        "--epochs", "1", "--model", "cifar_resnet20", "--train-batch-size", "32",
        "--image-size", "32", "--backbone", "cifar_resnet20", "--backbone-weights", "random",
        "--cam-model", "cifar_resnet20", "--cam-weights", "random", "--cam-layer", "layer3",
        "--patch-image-size", "64", "--num-bins", "3", "--rho", "0.25", "--batch-size", "32",
    ]  # fmt: skip
    assert main(argv) == 0
    rows = {r["arm"]: r for r in json.loads((out / "evaluation" / "evaluation.json").read_text())}
    assert set(rows) == {"full", "random", "dq", "adq"}
    assert rows["full"]["n_train"] == 120
    assert rows["adq"]["n_train"] == rows["random"]["n_train"] == budget(120, 0.25)
    assert all(0.0 <= r["final_acc"] <= 1.0 and 0.0 <= r["best_acc"] <= 1.0 for r in rows.values())
    # One embedding and binning served all three samplers.
    embeds = [p for p in (out / "_stages").iterdir() if p.name.startswith("embed-") and ".tmp-" not in p.name]
    assert len(embeds) == 1
    html = (out / "adq" / "report" / "report.html").read_text()
    assert "accuracy.png" in html and all(arm in html for arm in rows)
