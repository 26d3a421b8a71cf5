"""`adq train-mae`: the MAE objective's pieces, and a tiny real Ray Train run whose checkpoint loads strictly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from util import CIFAR_TAR, crash_once

from adq_ray.cli import main
from adq_ray.config import Config, ConfigError
from adq_ray.evaluate.mae_train import MaeRecipe, random_resized_crop, train_mae
from adq_ray.ingest.cifar import extract_cifar_subset
from adq_ray.models.mae import (
    ARCHS,
    load_mae,
    masked_psnr,
    patch_targets,
    random_keep,
    reconstruction_loss,
    warmup_cosine,
)


def test_random_keep_keeps_the_same_count_per_row_at_random():
    keep = random_keep(64, 64, 0.75, torch.Generator().manual_seed(0))
    assert keep.shape == (64, 64) and (keep.sum(1) == 16).all()
    assert len({tuple(row.nonzero().flatten().tolist()) for row in keep}) == 64  # rows differ
    with pytest.raises(ValueError, match="at least one"):
        random_keep(2, 4, 0.9)


def test_reconstruction_loss_counts_only_the_dropped_patches():
    torch.manual_seed(0)
    imgs = torch.randn(2, 3, 8, 8)
    keep = torch.tensor([[True, False, False, True], [False, True, True, True]])
    pred = torch.randn(2, 4, 48)
    base = reconstruction_loss(pred, imgs, keep, 4, norm_pix_loss=False)
    moved = pred.clone()
    moved[keep] += 100.0  # predictions for kept patches are ignored
    assert reconstruction_loss(moved, imgs, keep, 4, norm_pix_loss=False) == pytest.approx(base.item())
    target = patch_targets(imgs.double(), 4)
    expected = ((pred.double() - target) ** 2).mean(-1)[~keep].mean()  # float64 reference
    assert base.item() == pytest.approx(expected.item(), rel=1e-5)
    standard = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    normed = ((pred.double() - standard) ** 2).mean(-1)[~keep].mean()
    assert reconstruction_loss(pred, imgs, keep, 4, norm_pix_loss=True).item() == pytest.approx(normed.item(), rel=1e-5)


def test_masked_psnr_and_schedule():
    reference = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    images = reference.clone()
    images[:, :, :4, :4] = 10  # patch 0 (4 px patches, 2x2 grid) is off by 10; the rest exact
    keep = torch.tensor([[False, True, True, False]])
    assert masked_psnr(images, reference, keep) == pytest.approx(10 * math.log10(255**2 / 50))  # mean sq err 100/2
    assert [warmup_cosine(s, 10, 2) for s in (0, 1, 2, 10)] == pytest.approx([0.0, 0.5, 1.0, 0.0])
    assert warmup_cosine(6, 10, 2) == pytest.approx(0.5)


def test_random_resized_crop_keeps_range_and_shape():
    x = torch.rand(4, 3, 16, 16)
    out = random_resized_crop(x, 0.2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    full = random_resized_crop(x, 1.0, torch.Generator().manual_seed(0))
    assert full.shape == x.shape


def test_recipe_rejects_bad_values():
    with pytest.raises(ConfigError, match="size"):
        MaeRecipe(size="huge")
    with pytest.raises(ConfigError, match="mask_ratio"):
        MaeRecipe(mask_ratio=1.0)


def test_train_mae_tiny_learns_and_its_checkpoint_loads_strictly(ray_session, tmp_path):
    """Real Ray Train on 120 CIFAR images at 32 px in 4 px patches: loss falls, load_mae reads it strictly.

    The worker is killed after epoch 3: the run goes on from the latest checkpoint (after epoch 3, or 2
    when Ray Train's controller had not yet polled epoch 3's report), not from scratch.
    """
    train = extract_cifar_subset(CIFAR_TAR, tmp_path / "train", per_class=12, split="train")
    config = Config(input=str(train), output=str(tmp_path / "out"), patch_image_size=32, patch_size=4)
    recipe = MaeRecipe(size="tiny", epochs=5, batch_size=32, base_lr=2e-3, warmup_epochs=1, holdout_every=10)
    marker = tmp_path / "crashed"
    result = train_mae(
        config, recipe, num_workers=1, cpus_per_worker=0.5, max_failures=1, checkpoint_every=1,
        on_epoch=crash_once(marker, epoch=3),
    )  # fmt: skip
    epochs = open(f"{marker}.log").read().split()
    assert marker.exists() and epochs in ("1 2 3 4 5".split(), "1 2 3 3 4 5".split()), epochs
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3, 4, 5]
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 5 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    blob = torch.load(result["checkpoint"], weights_only=True)
    assert set(blob) == {"model", "args"} and blob["args"]["patch_size"] == 4
    fresh = ARCHS["mae_vit_tiny"](img_size=32, patch_size=4)
    assert set(blob["model"]) == set(fresh.state_dict())  # the official key layout, nothing extra
    model = load_mae("mae_vit_tiny", result["checkpoint"])  # strict: raises on any missing/unexpected key
    assert (model.patch_size, model.grid, model.norm_pix_loss) == (4, 8, False)  # pixel loss by default
    assert torch.equal(model.state_dict()["decoder_pred.weight"], blob["model"]["decoder_pred.weight"])
    assert result["n_heldout"] == 12 and result["load"] == f"mae_vit_tiny:{result['checkpoint']}"
    for scores in result["psnr"].values():
        assert set(scores) == {"mae", "mean_fill"} and all(math.isfinite(v) and v > 5 for v in scores.values())
    with pytest.raises(ValueError, match="do not fit"):
        load_mae("mae_vit_small", result["checkpoint"])


def test_train_mae_command_line(ray_session, tmp_path, capsys):
    train = extract_cifar_subset(CIFAR_TAR, tmp_path / "train", per_class=4, split="train")
    out = tmp_path / "out"
    argv = ["train-mae", "--input", str(train), "--output", str(out), "--patch-image-size", "32"]
    argv += ["--patch-size", "8", "--epochs", "1", "--mae-batch-size", "8", "--cpus-per-actor", "0.5", "--resume"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    checkpoint = out / "mae" / "checkpoint.pth"
    assert checkpoint.exists() and load_mae("mae_vit_tiny", str(checkpoint)).grid == 4
    # --resume again: the finished run is found by its name (nothing trains, the checkpoint stays) ...
    written = checkpoint.stat().st_mtime_ns
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["history"] == first["history"] and checkpoint.stat().st_mtime_ns == written
    [run] = (out / "mae" / "runs").iterdir()
    assert (run / "adq-result.json").exists()
    # ... and another recipe is another run.
    assert main([*argv, "--train-mask-ratio", "0.5"]) == 0
    capsys.readouterr()
    assert len(list((out / "mae" / "runs").iterdir())) == 2 and checkpoint.stat().st_mtime_ns != written
    # That run rewrote the checkpoint: the first run's record no longer vouches for the file, so it trains again.
    overwritten = checkpoint.stat().st_mtime_ns
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["history"][0]["epoch"] == 1
    assert checkpoint.stat().st_mtime_ns != overwritten and len(list((out / "mae" / "runs").iterdir())) == 2
    assert main(["train-mae", "--input", str(train), "--output", str(out), "--epochs", "0"]) == 2
    assert "epochs" in capsys.readouterr().err
    assert main(["train-mae", "--input", str(train), "--output", str(out), "--max-failures", "-1"]) == 2
    assert "max_failures must be >= 0" in capsys.readouterr().err
