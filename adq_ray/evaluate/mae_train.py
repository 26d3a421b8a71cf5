"""`adq train-mae`: pretrain an MAE on the uncompressed training images with Ray Train (He et al. 2022).

The official recipe at the configured patch grid (`patch_image_size` / `patch_size`): 75% random
masking per image, MSE on the dropped patches, AdamW (betas 0.9 / 0.95, weight decay 0.05 except biases
and norms), lr = base_lr x batch / 256 with a linear warmup and a half-cycle cosine per step,
RandomResizedCrop (scale 0.2-1) + flip. Every image whose sample id is a multiple of `holdout_every` is
held out; after training, the driver reports the
PSNR of the reconstruction on the dropped patches of those images, against mean fill (the fallback
without an MAE), at the training mask ratio and at the pipeline's `mask_ratio`.

One deviation: the loss is on plain (ImageNet-normalised) pixels by default, not on per-patch
standardised pixels (the official pretraining's norm_pix_loss). This MAE exists to paint dropped patches,
and a norm_pix model's prediction carries no mean or contrast for a dropped patch: `predict_pixels` must
borrow the visible patches' average, so its fill is about mean fill plus texture. Measured on CIFAR-10
(benchmarks/RESULTS.md, "MAE reconstruction vs mean fill"): the same tiny MAE and steps gain +3.3 dB over
mean fill with pixel loss and nothing with norm_pix_loss. The official visualize checkpoints, the ones DQ
reconstructs with, were also trained on plain pixels. `norm_pix_loss=True` (`--norm-pix-loss`) restores it.

The checkpoint is the official layout, `{"model": state_dict, "args": {...}}`, which
`load_mae("mae_vit_<size>", path)` reads strictly (the args give its image and patch size).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F

from adq_ray import resources, storage
from adq_ray.config import Config, ConfigError
from adq_ray.evaluate import resume as checkpoints
from adq_ray.evaluate.loop import all_generator_states, check_resumable
from adq_ray.ingest import list_inputs, read_images, walk_input
from adq_ray.layout import fingerprint
from adq_ray.models import normalize
from adq_ray.models.mae import ARCHS, MAE_SIZES, load_mae, masked_psnr, random_keep, reconstruction_loss, warmup_cosine
from adq_ray.patches.fill import fill_mean, reconstruct

log = logging.getLogger("adq_ray")


@dataclass(frozen=True)
class MaeRecipe:
    """The official MAE pretraining recipe, scaled to a run of `epochs` (defaults: a CPU-sized tiny run)."""

    size: str = "tiny"
    epochs: int = 20
    batch_size: int = 128  # global: split evenly over the workers
    base_lr: float = 1.5e-4  # lr = base_lr * batch_size / 256
    warmup_epochs: float = 2.0
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False  # pixel loss: see the module docstring
    min_crop_scale: float = 0.2
    holdout_every: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            f"size must be one of {', '.join(MAE_SIZES)}": self.size in MAE_SIZES,
            "epochs must be >= 1": self.epochs >= 1,
            "batch_size must be >= 1": self.batch_size >= 1,
            "base_lr must be > 0": self.base_lr > 0,
            "warmup_epochs must be >= 0": self.warmup_epochs >= 0,
            "weight_decay must be >= 0": self.weight_decay >= 0,
            "mask_ratio must be in (0, 1)": 0 < self.mask_ratio < 1,
            "min_crop_scale must be in (0, 1]": 0 < self.min_crop_scale <= 1,
            "holdout_every must be >= 2": self.holdout_every >= 2,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ConfigError(f"invalid MAE recipe: {'; '.join(failed)} (got {self})")

    @property
    def arch(self) -> str:
        return f"mae_vit_{self.size}"

    def replace(self, **changes: Any) -> MaeRecipe:
        return dataclasses.replace(self, **changes)


def train_mae(
    config: Config,
    recipe: MaeRecipe = MaeRecipe(),
    checkpoint: str = "",
    *,
    num_workers: int = 1,
    use_gpu: bool | None = None,
    cpus_per_worker: float | None = None,
    max_failures: int = 2,
    checkpoint_every: int = 5,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Pretrain an MAE on `config.input` at `config.patch_image_size` in `config.patch_size` patches.

    Writes the checkpoint to `checkpoint` (default `<output>/mae/checkpoint.pth`, local or s3://) and
    returns {checkpoint, arch, load ("arch:checkpoint" for `--mae`), history (per epoch: epoch, lr,
    loss, epoch_s), psnr (held-out, dB, MAE and mean fill), ...}. Workers take one GPU each when the
    cluster has GPUs, else `config.cpus_per_actor` (`resources.train_workers`), unless given. With
    `max_failures` > 0 the training state is checkpointed every `checkpoint_every` epochs and a failed
    worker group restarts from the latest one (`adq_ray.evaluate.resume`). `on_epoch(record)` runs on
    every worker after each epoch's report (logging, or fault injection in tests).

    With `resume` the run is named after its data, grid, recipe, workers and checkpoint path
    (`checkpoints.run_digest`): a rerun after a lost driver goes on from the run's latest checkpoint, and
    one that finished only recomputes the held-out PSNR, unless its checkpoint file has been removed or
    rewritten since (size and modification time differ from those it recorded): then it trains again.
    """
    checkpoints.check_retries(max_failures, checkpoint_every)
    if not ray.is_initialized():
        resources.init_ray()
    workers = resources.train_workers(config)
    use_gpu = workers["use_gpu"] if use_gpu is None else use_gpu
    cpus_per_worker = workers["cpus_per_worker"] if cpus_per_worker is None else cpus_per_worker
    checkpoint = checkpoint or storage.join(config.output, "mae", "checkpoint.pth")
    start = time.perf_counter()
    decode = config.replace(image_size=config.patch_image_size)
    listing = walk_input(config)
    images = read_images(decode, list_inputs(config, listing))
    images = images.filter(expr="status == 'ok'").select_columns(["sample_id", "image"]).materialize()
    every = recipe.holdout_every
    train = images.filter(lambda row: row["sample_id"] % every != 0)
    held = images.filter(lambda row: row["sample_id"] % every == 0).take_all()
    if not held:
        raise ValueError(f"no held-out image: {config.input} has no sample id divisible by holdout_every={every}")
    runs = checkpoints.runs_folder(storage.join(config.output, "mae", "runs"))
    name = f"adq-mae-{uuid.uuid4().hex[:12]}"
    if resume:  # conservative: the embed fingerprint also covers the backbone (a new one retrains the MAE)
        data = fingerprint(decode, "embed", listing.digest)
        name = f"adq-mae-{checkpoints.run_digest(data, config.patch_size, recipe, num_workers, use_gpu, checkpoint)}"
    done = checkpoints.finished(runs, name) if resume else None
    if done is not None and done["checkpoint"] == storage.stamp(checkpoint):
        history: list[dict[str, float]] = done["history"]
        log.info("adq train-mae: the run %s finished earlier; its checkpoint is %s", name, checkpoint)
    else:
        if done is not None:  # the file was removed or rewritten (by another run) since: train it again
            log.warning("adq train-mae: %s is not the checkpoint run %s wrote; training again", checkpoint, name)
        trainer = checkpoints.trainer(
            _train_loop,
            {
                "recipe": recipe,
                "img_size": config.patch_image_size,
                "patch_size": config.patch_size,
                "checkpoint": checkpoint,
            },
            name=name,
            storage_path=runs,
            num_workers=num_workers,
            use_gpu=use_gpu,
            cpus_per_worker=cpus_per_worker,
            max_failures=max_failures,
            checkpoint_every=checkpoint_every,
            on_epoch=on_epoch,
            datasets={"train": train},
        )
        history = trainer.fit().return_value
        if resume:  # the checkpoint's stamp: a later rerun trusts the file only if nothing rewrote it
            checkpoints.save_result(runs, name, {"history": history, "checkpoint": storage.stamp(checkpoint)})
    held_images = torch.from_numpy(np.stack([row["image"] for row in held])).permute(0, 3, 1, 2).contiguous()
    model = load_mae(recipe.arch, checkpoint)
    psnr = {
        f"mask_{ratio:g}": heldout_psnr(model, held_images, ratio, seed=recipe.seed)
        for ratio in sorted({recipe.mask_ratio, config.mask_ratio})
    }
    return {
        "checkpoint": checkpoint,
        "arch": recipe.arch,
        "load": f"{recipe.arch}:{checkpoint}",
        "img_size": config.patch_image_size,
        "patch_size": config.patch_size,
        "n_heldout": len(held_images),
        "psnr": psnr,
        "history": history,
        "wall_s": round(time.perf_counter() - start, 1),
    }


@torch.no_grad()
def heldout_psnr(model: torch.nn.Module, images: torch.Tensor, mask_ratio: float, seed: int = 0) -> dict[str, float]:
    """PSNR (dB) on the dropped patches of uint8 images (B, 3, S, S) under seeded random masks: MAE vs mean fill."""
    generator = torch.Generator().manual_seed(seed)
    keep = random_keep(len(images), model.grid**2, mask_ratio, generator)
    mae = torch.cat([reconstruct(model, x, k) for x, k in zip(images.split(256), keep.split(256))])
    mean = fill_mean(images, keep)
    return {"mae": masked_psnr(mae, images, keep), "mean_fill": masked_psnr(mean, images, keep)}


def _train_loop(config: dict[str, Any]) -> list[dict[str, float]]:
    """Runs on every Ray Train worker: its shard in memory as uint8 tensors, then the MAE recipe.

    After a restart the model, optimizer, step and every worker's generator come from the latest
    checkpoint, so the run goes on as it would have without the failure.
    """
    recipe: MaeRecipe = config["recipe"]
    torch.set_num_threads(config["threads"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed * 10_007 + rank)
    chunks = [
        torch.from_numpy(np.ascontiguousarray(batch["image"])).permute(0, 3, 1, 2)
        for batch in ray.train.get_dataset_shard("train").iter_batches(batch_size=1024, batch_format="numpy")
    ]
    images = torch.cat(chunks).contiguous().to(device)
    net = ARCHS[recipe.arch](
        img_size=config["img_size"], patch_size=config["patch_size"], norm_pix_loss=recipe.norm_pix_loss
    )
    model = ray.train.torch.prepare_model(net)
    batch_size = max(1, recipe.batch_size // world)
    lr = recipe.base_lr * recipe.batch_size / 256
    optimizer = torch.optim.AdamW(_param_groups(net, recipe.weight_decay), lr=lr, betas=(0.9, 0.95))
    steps_per_epoch = max(1, len(images) // batch_size)  # drop_last, as the official loader
    total, warmup = recipe.epochs * steps_per_epoch, recipe.warmup_epochs * steps_per_epoch
    grid = {"img_size": config["img_size"], "patch_size": config["patch_size"]}
    history: list[dict[str, Any]] = []
    saved = checkpoints.latest_state(device)  # after a restart: go on from the latest checkpoint
    if saved is not None:
        check_resumable(saved, {**dataclasses.asdict(recipe), **grid}, world)
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generators"][rank].cpu())
        history = saved["history"]
    step = len(history) * steps_per_epoch
    for epoch in range(len(history), recipe.epochs):
        start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        order = torch.randperm(len(images), generator=generator)
        for i in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr * warmup_cosine(step, total, warmup)
            batch = images[order[i * batch_size : (i + 1) * batch_size].to(device)]
            loss_sum += train_step(model, net, optimizer, batch, recipe.mask_ratio, recipe.min_crop_scale, generator)
            step += 1
        record = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "loss": loss_sum.item() / steps_per_epoch,
            "epoch_s": time.perf_counter() - start,
        }
        history.append(record)
        state = None
        if checkpoints.due(epoch + 1, recipe.epochs, config["checkpoint_every"], config["max_failures"]):
            state = {  # saved before the next step: no copy needed
                "recipe": {**dataclasses.asdict(recipe), **grid},
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generators": all_generator_states(generator),
                "history": history,
            }
        checkpoints.report(record, state)
        if config["on_epoch"] is not None:
            config["on_epoch"](record)
    if rank == 0:
        args = {
            "arch": recipe.arch,
            "img_size": config["img_size"],
            "patch_size": config["patch_size"],
            "norm_pix_loss": recipe.norm_pix_loss,
            "epochs": recipe.epochs,
            "mask_ratio": recipe.mask_ratio,
        }
        buffer = io.BytesIO()
        torch.save({"model": net.state_dict(), "args": args}, buffer)
        storage.write_bytes(config["checkpoint"], buffer.getvalue())
    return history


def train_step(
    model: torch.nn.Module,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    mask_ratio: float,
    min_crop_scale: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """One MAE step on uint8 images (B, 3, S, S): crop + flip, random masking, loss, update; the loss (detached).

    `model` runs the forward (the Ray Train wrapper, or `net` itself); `net` gives the grid and the loss.
    """
    x = normalize(random_resized_crop(batch.float().div_(255), min_crop_scale, generator))
    keep = random_keep(len(x), net.grid**2, mask_ratio, generator).to(x.device)
    loss = reconstruction_loss(model(x, keep), x, keep, net.patch_size, net.norm_pix_loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _param_groups(net: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only (timm's param_groups_weight_decay, as the official code)."""
    decay, no_decay = [], []
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") or "token" in name else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def random_resized_crop(x: torch.Tensor, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image RandomResizedCrop(scale (min_scale, 1), ratio 3/4-4/3, bicubic) + flip of (B, C, S, S) floats."""
    b, _, s, _ = x.shape
    area = torch.empty(b).uniform_(min_scale, 1.0, generator=generator)
    log_ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * (1 - w) + w / 2) * 2 - 1
    cy = (torch.rand(b, generator=generator) * (1 - h) + h / 2) * 2 - 1
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).clamp_(0, 1)
