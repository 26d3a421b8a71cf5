"""Train a classifier from scratch on a (compressed) dataset and test it, on Ray Train (spec section 6).

The datasets are Ray Datasets with columns `image` (uint8 HxWx3, any size) and `label` (int64). They
are resized to the recipe's image size once and materialized, so upstream work (decoding, MAE
reconstruction) runs once; each worker reads its shard once into uint8 tensors on its device and
trains from memory (`fit`: seeded permutations, crops and flips on the device, bf16 autocast and
channels_last on CUDA). `fit` is plain PyTorch and also runs without Ray (benchmarks/accuracy.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import ray.data
import ray.train
import ray.train.torch
import torch

from adq_ray.evaluate import resume
from adq_ray.evaluate.classifier import create_classifier
from adq_ray.evaluate.loop import Recipe, best_epoch, fit, random_crop_flip, to_images

__all__ = ["Recipe", "fit", "random_crop_flip", "to_images", "train_and_test"]

RESIZE_BATCH = 256  # rows per resize task: small blocks (e.g. from_items) are bundled, not one task each


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
    max_failures: int = 0,
    checkpoint_every: int = 5,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train `recipe.model` on `train` with a TorchTrainer and test it after every epoch.

    Returns final_acc (last epoch), best_acc and best_epoch (DQ reports the best), n_train, n_test,
    epochs, wall_s (resize + fit) and history (one dict per epoch: epoch, lr, train_loss, train_acc,
    test_acc, epoch_s). `storage_path` (local or s3://) holds Ray Train's run folder `name` (default: a
    fresh one). A `name` that already has a run folder there goes on from that run's latest checkpoint:
    give one only for the same data and recipe (`compare.run_name`).

    With `max_failures` > 0 the state is checkpointed every `checkpoint_every` epochs and Ray Train
    restarts a failed worker group up to `max_failures` times from the latest one (`resume`): model,
    optimizer, schedule and every worker's draws as they were (Ray Data may hand a worker its shard's
    rows in another order). `on_epoch(record)` runs on every worker after each epoch's report (logging,
    or fault injection in tests).
    """
    resume.check_retries(max_failures, checkpoint_every)
    start = time.perf_counter()
    train, test = (_resized(dataset, recipe.image_size) for dataset in (train, test))
    trainer = resume.trainer(
        _train_loop,
        {"recipe": recipe},
        name=name or f"adq-eval-{uuid.uuid4().hex[:12]}",
        storage_path=storage_path,
        num_workers=num_workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus_per_worker,
        max_failures=max_failures,
        checkpoint_every=checkpoint_every,
        on_epoch=on_epoch,
        datasets={"train": train, "test": test},
        # Every worker tests on the whole test set: an equal split would drop rows.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    history: list[dict[str, float]] = trainer.fit().return_value
    wall_s = time.perf_counter() - start
    best = best_epoch(history)
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
    """Runs on every Ray Train worker; returns the per-epoch history (rank 0's reaches the driver).

    The worker's shard and the test set are read once into uint8 tensors on its device; every epoch
    then shuffles, augments and trains from memory (`fit`), from the latest checkpoint after a restart.
    """
    recipe: Recipe = config["recipe"]
    torch.set_num_threads(config["threads"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    train_x, train_y = _collect(ray.train.get_dataset_shard("train"), device)
    test_x, test_y = _collect(ray.train.get_dataset_shard("test"), device)
    net = create_classifier(recipe.model, recipe.num_classes)
    model = ray.train.torch.prepare_model(net)

    def report(record: dict[str, Any], state: Callable[[], dict[str, Any]]) -> None:
        save = resume.due(record["epoch"], recipe.epochs, config["checkpoint_every"], config["max_failures"])
        resume.report(record, state() if save else None)
        if config["on_epoch"] is not None:
            config["on_epoch"](record)

    start = resume.latest_state(device)
    return fit(train_x, train_y, test_x, test_y, recipe, device, model=model, rank=rank, on_epoch=report, resume=start)


def _collect(shard: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset shard of (image uint8 SxSx3, label) rows as uint8 (N, 3, S, S) and int64 (N,) on `device`."""
    images, labels = [], []
    for batch in shard.iter_batches(batch_size=RESIZE_BATCH, batch_format="numpy"):
        images.append(torch.from_numpy(np.ascontiguousarray(batch["image"])).permute(0, 3, 1, 2))
        labels.append(torch.as_tensor(batch["label"], dtype=torch.int64))
    if not images:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8, device=device), torch.zeros(0, dtype=torch.int64)
    return torch.cat(images).contiguous().to(device), torch.cat(labels).to(device)
