"""Train a classifier from scratch on a (compressed) dataset and test it, on Ray Train (spec section 6).

The datasets are Ray Datasets with columns `image` (uint8 HxWx3, any size) and `label` (int64). They
are resized to the recipe's image size once and materialized, so upstream work (decoding, MAE
reconstruction) runs once, not once per epoch; each worker then augments and normalises its own
batches. The tensor math (`to_images`, `random_crop_flip`) is plain PyTorch, kept apart from Ray.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray.data
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from adq_ray.config import ConfigError
from adq_ray.evaluate.classifier import create_classifier
from adq_ray.models import normalize

RESIZE_BATCH = 256  # rows per resize task: small blocks (e.g. from_items) are bundled, not one task each


@dataclass(frozen=True)
class Recipe:
    """The DQ/ADQ CIFAR-10 recipe: SGD + cosine schedule, RandomCrop(32, pad 4) + flip, batch 128."""

    model: str = "resnet18_cifar"
    num_classes: int = 10
    epochs: int = 200
    batch_size: int = 128  # global: split evenly over the workers
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    image_size: int = 32
    crop_padding: int = 4
    flip: bool = True
    shuffle_buffer: int = 10_000  # rows per worker shuffled between epochs; 0 = stream order
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "num_classes must be >= 2": self.num_classes >= 2,
            "epochs must be >= 1": self.epochs >= 1,
            "batch_size must be >= 1": self.batch_size >= 1,
            "lr must be > 0": self.lr > 0,
            "momentum must be in [0, 1)": 0 <= self.momentum < 1,
            "weight_decay must be >= 0": self.weight_decay >= 0,
            "image_size must be >= 1": self.image_size >= 1,
            "crop_padding must be >= 0": self.crop_padding >= 0,
            "shuffle_buffer must be >= 0": self.shuffle_buffer >= 0,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ConfigError(f"invalid recipe {self}: {'; '.join(failed)}")

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)


def to_images(images: np.ndarray | Sequence[np.ndarray], size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 HxWx3 images (one stacked array, or ragged) -> float (B, 3, size, size) in [0, 1] on `device`.

    Larger or smaller images (e.g. 224 px reconstructions of 32 px inputs) are resized with
    antialiased bilinear interpolation, after the uint8 copy to the device.
    """
    if isinstance(images, np.ndarray) and images.dtype != object:
        return _resize(torch.from_numpy(np.ascontiguousarray(images)).to(device), size)
    return torch.cat([to_images(np.ascontiguousarray(image)[None], size, device) for image in images])


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-sample RandomCrop(size, padding, zero fill) and horizontal flip of a (B, C, H, W) batch.

    The offsets come from the CPU `generator`; the gather runs on the batch's device.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator)
    rows = top + torch.arange(h)
    cols = left + torch.arange(w)
    if flip:
        mirrored = torch.rand(b, 1, generator=generator) < 0.5
        cols = torch.where(mirrored, cols.flip(1), cols)
    rows, cols = rows.to(x.device), cols.to(x.device)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def train_and_test(
    train: ray.data.Dataset,
    test: ray.data.Dataset,
    recipe: Recipe = Recipe(),
    *,
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    storage_path: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Train `recipe.model` on `train` with a TorchTrainer and test it after every epoch.

    Returns final_acc (last epoch), best_acc and best_epoch (DQ reports the best), n_train, n_test,
    epochs, wall_s (resize + fit) and history (one dict per epoch: epoch, lr, train_loss, train_acc,
    test_acc, epoch_s). `storage_path` (local or s3://) holds Ray Train's run folder; each call gets
    a fresh `name` so a rerun never resumes an old run.
    """
    start = time.perf_counter()
    train, test = (_resized(dataset, recipe.image_size) for dataset in (train, test))
    trainer = ray.train.torch.TorchTrainer(
        _train_loop,
        train_loop_config={"recipe": recipe, "threads": max(1, int(cpus_per_worker))},
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(name=name or f"adq-eval-{uuid.uuid4().hex[:12]}", storage_path=storage_path),
        datasets={"train": train, "test": test},
        # Every worker tests on the whole test set: an equal split would drop rows.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    history: list[dict[str, float]] = trainer.fit().return_value
    wall_s = time.perf_counter() - start
    best = max(history, key=lambda record: record["test_acc"])
    return {
        "final_acc": history[-1]["test_acc"],
        "best_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "n_train": history[-1]["n_train"],
        "n_test": history[-1]["n_test"],
        "epochs": len(history),
        "wall_s": wall_s,
        "history": history,
    }


def _resized(dataset: ray.data.Dataset, size: int) -> ray.data.Dataset:
    """`image` resized to size x size (uint8) and the dataset held in the object store for all epochs."""
    return (
        dataset.select_columns(["image", "label"])
        .map_batches(_resize_batch, fn_kwargs={"size": size}, batch_size=RESIZE_BATCH, batch_format="numpy")
        .materialize()
    )


def _resize_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    images = to_images(batch["image"], size).mul_(255).round_().to(torch.uint8)
    return {"image": images.permute(0, 2, 3, 1).numpy(), "label": batch["label"]}


def _train_loop(config: dict[str, Any]) -> list[dict[str, float]]:
    """Runs on every Ray Train worker; returns the per-epoch history (rank 0's reaches the driver)."""
    recipe: Recipe = config["recipe"]
    torch.set_num_threads(config["threads"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed * 10_007 + rank)
    device = ray.train.torch.get_device()

    net = create_classifier(recipe.model, recipe.num_classes)
    model = ray.train.torch.prepare_model(net)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
    train_shard = ray.train.get_dataset_shard("train")
    test_shard = ray.train.get_dataset_shard("test")
    batch_size = max(1, recipe.batch_size // world)

    history = []
    for epoch in range(recipe.epochs):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        batches = train_shard.iter_batches(
            batch_size=batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=recipe.shuffle_buffer or None,
            local_shuffle_seed=recipe.seed + epoch * world + rank if recipe.shuffle_buffer else None,
        )
        loss_sum, correct, seen = _train_epoch(model, optimizer, batches, recipe, generator, device)
        loss_sum, correct, seen = _sum_over_workers([loss_sum, correct, seen], device)
        test_batches = test_shard.iter_batches(batch_size=batch_size, batch_format="numpy")
        test_correct, test_seen = _test(net, test_batches, recipe, device)
        if not (seen and test_seen):
            raise ValueError(f"nothing to learn from or test on: {int(seen)} training and {test_seen} test images")
        schedule.step()
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "test_acc": test_correct / test_seen,
            "n_train": int(seen),
            "n_test": test_seen,
            "epoch_s": time.perf_counter() - start,
        }
        ray.train.report(record)
        history.append(record)
    return history


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[dict[str, np.ndarray]],
    recipe: Recipe,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[float, int, int]:
    """One pass over this worker's shard: (summed loss, correct, samples)."""
    model.train()
    loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for batch in batches:
        x = to_images(batch["image"], recipe.image_size, device)
        x = random_crop_flip(x, recipe.crop_padding, recipe.flip, generator)
        y = torch.as_tensor(batch["label"], dtype=torch.int64, device=device)
        logits = model(normalize(x))
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return loss_sum.item(), int(correct), seen


@torch.no_grad()
def _test(
    net: nn.Module, batches: Iterable[dict[str, np.ndarray]], recipe: Recipe, device: torch.device
) -> tuple[int, int]:
    """(correct, samples) of the unwrapped model over the whole test set, no augmentation."""
    net.eval()
    correct, seen = 0, 0
    for batch in batches:
        x = normalize(to_images(batch["image"], recipe.image_size, device))
        y = torch.as_tensor(batch["label"], dtype=torch.int64, device=device)
        correct += int((net(x).argmax(1) == y).sum())
        seen += len(y)
    return correct, seen


def _sum_over_workers(values: list[float], device: torch.device) -> list[float]:
    """Sum scalars over the Ray Train process group (identity with one worker)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()
