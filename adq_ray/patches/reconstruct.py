"""Rebuild training images from the stored patches: paste them on a grid, fill the dropped ones.

Dropped patches are predicted by an MAE (spec section 5: x = x * keep + mae(x) * (1 - keep), so
kept pixels are bit-identical to the stored ones) or, without MAE weights, filled with the mean
colour of the image's kept pixels ("mean") or black ("zero").
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import ray
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from adq_ray import resources, storage
from adq_ray.models import select_device
from adq_ray.models.mae import load_mae
from adq_ray.patches.codec import decode_patches, decode_source
from adq_ray.patches.fill import fill_mean, reconstruct
from adq_ray.patches.grid import expand_mask, keep_mask, source_mask, unpatchify
from adq_ray.tables import read_parquet

Fill = Literal["mean", "zero"]


def assemble(kept_idx: torch.Tensor, patches: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Place patches (B, K, C, p, p) at kept_idx (B, K): images (B, C, grid*p, grid*p), zero where
    dropped, and the keep mask (B, grid^2)."""
    b, k, c, p, _ = patches.shape
    canvas = patches.new_zeros(b, grid * grid, c, p, p)
    canvas[torch.arange(b, device=patches.device)[:, None], kept_idx.long()] = patches
    return unpatchify(canvas, grid), keep_mask(kept_idx, grid * grid)


def restore(
    images: torch.Tensor, keep: torch.Tensor, mae: nn.Module | None = None, fill: Fill = "mean"
) -> torch.Tensor:
    """Fill the dropped patches of assembled images: with `mae` if given, else by `fill`."""
    if mae is not None:
        return reconstruct(mae, images, keep)
    if fill == "mean":
        return fill_mean(images, keep)
    if fill == "zero":
        return images
    raise ValueError(f"fill must be 'mean' or 'zero', got {fill!r}")


def decode_rows(table: pa.Table) -> tuple[torch.Tensor, torch.Tensor]:
    """Assembled uint8 images (B, 3, S, S), zero where dropped, and keep masks (B, L) from dataset rows.

    Strip-layout rows are pasted patch by patch; source-layout rows (`source_height` > 0) are decoded at
    the source's resolution and resized to S x S as ingest resizes the source (Pillow bilinear), which
    gives the kept patches' pixels exactly for lossless codecs. Tables without the source columns (written
    before they existed) are all strips.
    """
    sizes = set(zip(table["patch_size"].to_pylist(), table["image_size"].to_pylist()))
    if len(sizes) != 1:
        raise ValueError(f"rows mix patch/image sizes {sorted(sizes)}; read them in separate batches")
    ((p, s),) = sizes
    n = len(table)
    kept = table["kept_idx"].combine_chunks()
    kept_idx = torch.from_numpy(kept.flatten().to_numpy().astype(np.int64).reshape(n, -1))
    keep = keep_mask(kept_idx, (s // p) ** 2)
    heights = _column(table, "source_height", n)
    widths = _column(table, "source_width", n)
    data, codecs = table["patches"].to_pylist(), table["codec"].to_pylist()
    images = torch.zeros(n, 3, s, s, dtype=torch.uint8)
    strip = np.flatnonzero(heights == 0)
    if len(strip):
        patches = np.stack([decode_patches(data[i], codecs[i], p) for i in strip])
        images[strip] = assemble(kept_idx[strip], torch.from_numpy(patches).permute(0, 1, 4, 2, 3), s // p)[0]
    for i in np.flatnonzero(heights > 0):
        mask = source_mask(keep[i : i + 1].numpy(), int(heights[i]), int(widths[i]), s)[0]
        image = Image.fromarray(decode_source(data[i], codecs[i], mask)).resize((s, s), Image.Resampling.BILINEAR)
        images[i] = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    if len(strip) < n:
        images *= expand_mask(keep, p)
    return images, keep


def _column(table: pa.Table, name: str, n: int) -> np.ndarray:
    """An int column as numpy, zeros when the table predates it."""
    return table[name].to_numpy() if name in table.column_names else np.zeros(n, np.int32)


class CompressedImages(Dataset):
    """Torch dataset over a compressed dataset: (uint8 tensor (3, S, S), label) per stored image.

    The rows (a few KB each) are held in memory; each item is decoded and restored on access.

    Args:
        uri: the run's `<output>/dataset` (local or s3://).
        mae: an MAE from `load_mae` that paints the dropped patches; None: `fill` them.
        fill: "mean" (the kept pixels' mean colour) when there is no MAE.

    Example:
        >>> ds = CompressedImages("outputs/cifar10-demo/dataset")  # doctest: +SKIP
        >>> image, label = ds[0]  # uint8 (3, 224, 224), int
    """

    def __init__(self, uri: str, mae: nn.Module | None = None, fill: Fill = "mean") -> None:
        self.table = read_parquet(uri)
        self.mae = mae
        self.fill = fill

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.table.slice(index, 1)
        images, keep = decode_rows(row)
        return restore(images, keep, self.mae, self.fill)[0], row["label"][0].as_py()


class Restorer:
    """Ray actor for `read_reconstructed`: holds the MAE, turns dataset rows into images and labels."""

    def __init__(self, mae: str | None, mae_weights: str, fill: Fill, device: str) -> None:
        self.mae = None if mae is None else load_mae(mae, mae_weights).to(select_device(device))
        self.fill = fill

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        images, keep = decode_rows(batch)
        restored = restore(images, keep, self.mae, self.fill)
        return {
            "sample_id": batch["sample_id"].to_numpy(),
            "image": restored.permute(0, 2, 3, 1).contiguous().numpy(),
            "label": batch["label"].to_numpy(),
        }


def read_reconstructed(
    uri: str,
    mae: str | None = None,
    mae_weights: str = "hub",
    fill: Fill = "mean",
    batch_size: int = 64,
    device: str = "auto",
    num_actors: int = 1,
    num_cpus: float = 0.5,
    num_gpus: float = 0.0,
) -> ray.data.Dataset:
    """A Ray dataset of restored images: columns `sample_id`, `image` uint8 (S, S, 3), `label` int64.

    Args:
        uri: the run's `<output>/dataset` (local or s3://).
        mae, mae_weights: as in `load_mae` (None: no MAE, use `fill`); each actor loads the MAE once.
        fill: "mean" fills dropped patches with the kept pixels' mean colour when there is no MAE.
        batch_size, device, num_actors, num_cpus, num_gpus: the restore actor pool (`resources.pool`).

    Returns:
        A lazy `ray.data.Dataset`; iterate it or hand it to Ray Train.

    Example:
        >>> ds = read_reconstructed("s3://bucket/adq/in1k-r10/dataset", mae="mae_vit_large_patch16")  # doctest: +SKIP
        >>> batch = ds.take_batch(8)  # {"sample_id", "image", "label"}
    """
    fs, path = storage.resolve(uri)
    return ray.data.read_parquet(path, filesystem=fs).map_batches(
        Restorer,
        fn_constructor_kwargs={"mae": mae, "mae_weights": mae_weights, "fill": fill, "device": device},
        batch_format="pyarrow",
        batch_size=batch_size,
        **resources.pool(num_actors, num_gpus=num_gpus, num_cpus=num_cpus),
    )
