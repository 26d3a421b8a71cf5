"""Train a classifier from scratch on images held in memory and test it every epoch (spec section 6), no Ray.

Plain PyTorch, used by the Ray Train workers of `adq evaluate` (`adq_ray.evaluate.train`) and by
`benchmarks/accuracy.py` directly (several runs at once on one GPU). Images are uint8 tensors on the
training device; each epoch draws a seeded permutation, crops and flips on the device, and trains with
bf16 autocast and channels_last on CUDA.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from adq_ray.config import ConfigError
from adq_ray.evaluate.classifier import create_classifier
from adq_ray.models import normalize


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
    test_every: int = 1  # test after every N-th epoch and after the last (the others record test_acc None)
    flip: bool = True
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
            "test_every must be >= 1": self.test_every >= 1,
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


def fit(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    recipe: Recipe = Recipe(),
    device: torch.device | str = "cpu",
    *,
    model: nn.Module | None = None,
    rank: int = 0,
    bf16: bool | None = None,
    channels_last: bool | None = None,
    on_epoch: Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> list[dict[str, float]]:
    """Train from uint8 (N, 3, S, S) images and int64 (N,) labels held in memory; test after every epoch.

    The spec's recipe (SGD + cosine, RandomCrop + flip, batch `recipe.batch_size`), seeded by
    `recipe.seed`: the epoch permutations and the crops come from CPU generators, so a run is the same
    on any device up to floating-point order. `model` defaults to a fresh `create_classifier`; a DDP
    wrapper may be passed (each worker then trains on its own shard and the metrics are summed).
    bf16 autocast and channels_last default to on for CUDA. Returns one dict per epoch: epoch, lr,
    train_loss, train_acc, test_acc (None on untested epochs, `recipe.test_every`), n_train, n_test, epoch_s.

    After every epoch `on_epoch(record, state)` is called; `state()` builds the `training_state` (the
    model, optimizer, schedule, every worker's generator and the history so far; with several workers a
    collective: call it on all of them or none). `fit(..., resume=state())` goes on from there and gives
    the same history and weights as an uninterrupted run (bit-exact on CPU).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    bf16 = cuda if bf16 is None else bf16
    channels_last = cuda if channels_last is None else channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(recipe.seed)
    if model is None:
        model = create_classifier(recipe.model, recipe.num_classes)
    net = getattr(model, "module", model)
    model.to(device=device, memory_format=memory_format)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
    generator = torch.Generator().manual_seed(recipe.seed * 10_007 + rank)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    batch_size = max(1, recipe.batch_size // world)
    train_images, test_images = (_at_size(x, recipe.image_size).to(device) for x in (train_images, test_images))
    train_labels, test_labels = train_labels.to(device), test_labels.to(device)
    # DDP needs the same number of steps on every worker: the smallest shard sets it.
    n_local = torch.tensor([len(train_images)], device=device)
    if world > 1:
        dist.all_reduce(n_local, op=dist.ReduceOp.MIN)
    n_steps = -(-int(n_local) // batch_size)
    history: list[dict[str, Any]] = []
    if resume is not None:
        history = restore_state(resume, net, optimizer, schedule, generator, rank, world, recipe)
    for epoch in range(len(history), recipe.epochs):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        order = torch.randperm(len(train_images), generator=generator)[: n_steps * batch_size].to(device)
        batches = ((train_images[i], train_labels[i]) for i in order.split(batch_size))
        loss_sum, correct, seen = _train_epoch(model, optimizer, batches, recipe, generator, memory_format, bf16)
        loss_sum, correct, seen = _sum_over_workers([loss_sum, correct, seen], device)
        tested = (epoch + 1) % recipe.test_every == 0 or epoch + 1 == recipe.epochs
        test_correct, test_seen = _test(net, test_images, test_labels, memory_format, bf16) if tested else (0, -1)
        if not (seen and test_seen):
            raise ValueError(f"nothing to learn from or test on: {int(seen)} training and {test_seen} test images")
        schedule.step()
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "test_acc": test_correct / test_seen if tested else None,
            "n_train": int(seen),
            "n_test": len(test_images),
            "epoch_s": time.perf_counter() - start,
        }
        history.append(record)
        if on_epoch is not None:
            on_epoch(record, lambda: training_state(net, optimizer, schedule, generator, history, recipe))
    return history


def training_state(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    history: list[dict[str, Any]],
    recipe: Recipe,
) -> dict[str, Any]:
    """Everything `fit` needs to go on after `len(history)` epochs: a copy, for `torch.save` or `resume`.

    The generators of all workers are gathered (a collective when there are several): each draws its
    own shard's permutations and crops.
    """
    return copy.deepcopy(
        {
            "recipe": dataclasses.asdict(recipe),
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "generators": all_generator_states(generator),
            "history": history,
        }
    )


def all_generator_states(generator: torch.Generator) -> list[torch.Tensor]:
    """Every worker's CPU generator state, by rank (a collective with several workers; one entry without)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [generator.get_state()]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, generator.get_state())
    return states


def restore_state(
    state: dict[str, Any],
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    rank: int,
    world: int,
    recipe: Recipe,
) -> list[dict[str, Any]]:
    """Load a `training_state` into the run's objects in place; returns the history so far.

    Refuses a state from another recipe or another number of workers (their shards and draws differ).
    """
    check_resumable(state, dataclasses.asdict(recipe), world)
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    generator.set_state(state["generators"][rank].cpu())
    return list(state["history"])


def check_resumable(state: dict[str, Any], recipe: dict[str, Any], world: int) -> None:
    """Refuse a saved state whose recipe (a dict) or number of workers differs from this run's."""
    saved = state["recipe"]
    if saved != recipe:
        changed = sorted(k for k in {*saved, *recipe} if saved.get(k) != recipe.get(k))
        raise ValueError(f"cannot resume: the checkpoint was trained with another recipe ({', '.join(changed)} differ)")
    if len(state["generators"]) != world:
        raise ValueError(
            f"cannot resume: the checkpoint was written by {len(state['generators'])} workers and this run has "
            f"{world}; resume with the same number of workers"
        )


def _at_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, size, size) (antialiased bilinear when the size differs)."""
    if images.shape[-2:] == (size, size):
        return images
    out = [_resize(chunk.permute(0, 2, 3, 1), size).mul_(255).round_().to(torch.uint8) for chunk in images.split(1024)]
    return torch.cat(out)


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    recipe: Recipe,
    generator: torch.Generator,
    memory_format: torch.memory_format,
    bf16: bool,
) -> tuple[float, int, int]:
    """One pass over uint8 (B, 3, S, S) batches: (summed loss, correct, samples)."""
    model.train()
    loss_sum, correct, seen = None, None, 0
    for images, y in batches:
        x = random_crop_flip(images.float().div_(255), recipe.crop_padding, recipe.flip, generator)
        x = normalize(x).contiguous(memory_format=memory_format)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        batch_loss = loss.detach() * len(y)  # summed on the device: no sync per step
        batch_correct = (logits.argmax(1) == y).sum()
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
        seen += len(y)
    if loss_sum is None:
        return 0.0, 0, 0
    return loss_sum.item(), int(correct), seen


@torch.no_grad()
def _test(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    memory_format: torch.memory_format,
    bf16: bool,
    batch_size: int = 250,
) -> tuple[int, int]:
    """(correct, samples) of the unwrapped model over the whole test set, no augmentation."""
    net.eval()
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].float().div_(255)).contiguous(memory_format=memory_format)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net(x)
        correct += (logits.argmax(1) == labels[start : start + batch_size]).sum()
    return int(correct), len(images)


def best_epoch(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The tested epoch with the highest test accuracy (the earliest on ties)."""
    return max((h for h in history if h["test_acc"] is not None), key=lambda h: h["test_acc"])


def _sum_over_workers(values: list[float], device: torch.device) -> list[float]:
    """Sum scalars over the Ray Train process group (identity with one worker)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()
