"""Ray Data stage: score patches with GradCAM++, keep the most important ones, encode them compactly.

Two steps, so the per-row CPU work is off the model's critical path: `PatchSelector` (an actor: CAM,
top-k, the kept pixels as one buffer per batch) and `encode_rows` (CPU tasks: PNG/JPEG encode, one
Arrow table per batch). `PatchDropper` runs both in one call (in-process use, tests, benchmarks).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from adq_ray.config import Config
from adq_ray.models import create_model, normalize, resize, select_device
from adq_ray.patches.codec import dataset_schema, encode_source, encode_strip
from adq_ray.patches.gradcam import GradCAMPlusPlus
from adq_ray.patches.grid import patchify, source_mask, top_patches
from adq_ray.patches.resample import pillow_upsample

SOURCE_COLUMNS = ("source", "source_height", "source_width", "source_quality")


class PatchSelector:
    """Callable class for `map_batches(PatchSelector, fn_constructor_kwargs={"config": config}, compute=ActorPoolStrategy(...))`.

    Input batch (numpy): `sample_id` int64, `label` int64, `image` uint8 (B, S, S, 3) with
    S = config.patch_image_size, or (`patches.source.read_sources`) raw S x S x 3 bytes per row, b"" where the
    source fits in S x S and is upsampled here; optionally `source` (raw H x W x 3 bytes of a source with fewer
    than S x S pixels, else b""), `source_height`, `source_width`, `source_quality`.
    Output (numpy, for `encode_rows`): `sample_id`, `label`, `kept_idx` int16 (B, K), `pixels` (object:
    raw bytes: the kept-patch strip (p, K p, 3), or the source), `source_height`, `source_width`
    (0: strip layout), `source_quality` (0: unknown).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.device = select_device(config.device)
        # Only d score / d(CAM layer output) is needed: frozen parameters keep autograd from saving every
        # activation before the CAM layer (5.3 -> 1.8 GB at batch 64, 224 px; identical CAMs).
        model = create_model(config.cam_model, config.cam_weights).to(self.device).requires_grad_(False)
        # fp32 always: the kept set is a ranking of CAM values, which bf16 would reorder. cuDNN runs
        # "fp32" convolutions as TF32 by default, which could reorder it too (this actor's process only).
        if self.device.type == "cuda":
            torch.backends.cudnn.allow_tf32 = False
        self.cam = GradCAMPlusPlus(model, config.cam_layer)

    def _cam_input(self, x: torch.Tensor) -> torch.Tensor:
        """The image at the CAM model's own resolution (`cam_image_size`), e.g. 32 px for a CIFAR network.

        A CNN run far from its training resolution gives CAMs that miss the object; the CAM is resized to
        the patch grid either way, so only the scale the network sees changes.
        """
        size = self.config.cam_image_size
        if not size or size == x.shape[-1]:
            return x
        return resize(x, size)

    def images(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        """The batch's images as uint8 (B, 3, S, S) on this actor's device; a row with an empty `image` is its
        `source` upsampled here to Pillow's BILINEAR pixels: on a GPU by `pillow_upsample` (one call per source
        shape), on a CPU by Pillow itself (0.2 ms a CIFAR row, `pillow_upsample` there takes 4.5)."""
        size = self.config.patch_image_size
        images = np.asarray(batch["image"])
        n = len(images)
        if images.dtype != object:
            if n and (images.dtype != np.uint8 or images.shape[1:] != (size, size, 3)):
                raise ValueError(f"expected uint8 images (B, {size}, {size}, 3), got {images.dtype} {images.shape}")
            writable = np.require(images, requirements="W")  # Ray hands read-only arrays; torch warns on those
            return torch.from_numpy(writable).to(self.device).permute(0, 3, 1, 2)
        x = torch.empty((n, 3, size, size), dtype=torch.uint8, device=self.device)
        given = np.array([len(b) > 0 for b in images], bool)
        if given.any():
            pixels = np.frombuffer(b"".join(images[given]), np.uint8).reshape(-1, size, size, 3)
            x[torch.from_numpy(given).to(self.device)] = (
                torch.from_numpy(pixels.copy()).to(self.device).permute(0, 3, 1, 2)
            )
        heights = np.asarray(batch.get("source_height", np.zeros(n)), np.int64)
        widths = np.asarray(batch.get("source_width", np.zeros(n)), np.int64)
        missing = ~given
        if (missing & (heights == 0)).any():
            raise ValueError("a row has neither an image nor a source: expected `read_sources` output")
        for h, w in {(int(h), int(w)) for h, w in zip(heights[missing], widths[missing])}:
            rows = np.flatnonzero(missing & (heights == h) & (widths == w))
            raw = np.frombuffer(b"".join(batch["source"][rows]), np.uint8).reshape(-1, h, w, 3)
            x[torch.from_numpy(rows).to(self.device)] = self._upsample(raw, size)
        return x

    def _upsample(self, sources: np.ndarray, size: int) -> torch.Tensor:
        """uint8 (b, h, w, 3), h, w <= size -> uint8 (b, 3, size, size) on this actor's device, Pillow's pixels."""
        if self.device.type == "cpu":
            resized = [np.asarray(Image.fromarray(s).resize((size, size), Image.Resampling.BILINEAR)) for s in sources]
            return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2)
        source = torch.from_numpy(sources.copy()).to(self.device).permute(0, 3, 1, 2)
        return pillow_upsample(source, size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self.images(batch)
        n = len(x)
        heights = np.asarray(batch.get("source_height", np.zeros(n)), np.int32)
        kept_idx, strips = self.select(x, heights == 0)
        pixels = np.empty(n, dtype=object)
        sources = batch.get("source")
        strip_rows = iter(strips)
        for i in range(n):  # bytes objects: what Ray turns into one Arrow binary column
            pixels[i] = next(strip_rows).tobytes() if heights[i] == 0 else bytes(sources[i])
        return {
            "sample_id": np.asarray(batch["sample_id"], np.int64),
            "label": np.asarray(batch["label"], np.int64),
            "kept_idx": kept_idx,
            "pixels": pixels,
            "source_height": heights,
            "source_width": np.asarray(batch.get("source_width", np.zeros(n)), np.int32),
            "source_quality": np.asarray(batch.get("source_quality", np.zeros(n)), np.int32),
        }

    def select(self, images: np.ndarray | torch.Tensor, strip_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, S, S, 3) array or (B, 3, S, S) tensor -> kept patch indices int16 (B, K), and the strips
        (b, p, K p, 3) of `strip_rows`."""
        cfg = self.config
        k, p = cfg.kept_patches, cfg.patch_size
        if len(images) == 0:
            return np.zeros((0, k), np.int16), np.zeros((0, p, k * p, 3), np.uint8)
        x = images.to(self.device) if torch.is_tensor(images) else self.images({"image": images})
        scores = self.cam(normalize(self._cam_input(x)), cfg.grid).flatten(1)
        kept = top_patches(scores, k)
        rows = torch.from_numpy(np.flatnonzero(strip_rows)).to(self.device)
        chosen = patchify(x[rows], p)[torch.arange(len(rows), device=x.device)[:, None], kept[rows]]  # (b, K, 3, p, p)
        strips = chosen.permute(0, 3, 1, 4, 2).reshape(len(rows), p, k * p, 3)
        return kept.cpu().numpy().astype(np.int16), strips.cpu().numpy()


def encode_rows(batch: dict[str, np.ndarray], config: Config) -> pa.Table:
    """`PatchSelector` output -> dataset rows (`codec.dataset_schema`): each row's kept pixels encoded with
    `config.codec` at min(jpeg_quality, source_quality) (strip layout when source_height is 0)."""
    cfg = config
    kept_idx = np.asarray(batch["kept_idx"], np.int16).reshape(-1, cfg.kept_patches)
    heights, widths = np.asarray(batch["source_height"]), np.asarray(batch["source_width"])
    quality = np.asarray(batch["source_quality"])
    quality = np.where((quality > 0) & (quality < cfg.jpeg_quality), quality, cfg.jpeg_quality)
    masks = _source_masks(kept_idx, heights, widths, cfg)
    blobs = []
    for i, data in enumerate(batch["pixels"]):
        h, w = int(heights[i]), int(widths[i])
        if h == 0:
            strip = np.frombuffer(data, np.uint8).reshape(cfg.patch_size, -1, 3)
            blobs.append(encode_strip(strip, cfg.codec, int(quality[i])))
        else:
            image = np.frombuffer(data, np.uint8).reshape(h, w, 3)
            blobs.append(encode_source(image, masks[i], cfg.codec, int(quality[i])))
    n = len(blobs)
    patches = pa.array(blobs, type=pa.binary())
    lengths = np.array([len(b) for b in blobs], np.int64)
    columns = {
        "sample_id": pa.array(np.asarray(batch["sample_id"], np.int64)),
        "label": pa.array(np.asarray(batch["label"], np.int64)),
        "kept_idx": pa.FixedSizeListArray.from_arrays(pa.array(kept_idx.ravel()), cfg.kept_patches),
        "patches": patches,
        "codec": pa.repeat(pa.scalar(cfg.codec), n),
        "patch_size": pa.repeat(pa.scalar(cfg.patch_size, pa.int32()), n),
        "image_size": pa.repeat(pa.scalar(cfg.patch_image_size, pa.int32()), n),
        "nbytes": pa.array(lengths + 2 * cfg.kept_patches),
        "source_height": pa.array(heights.astype(np.int32)),
        "source_width": pa.array(widths.astype(np.int32)),
    }
    return pa.table(columns, schema=dataset_schema(cfg.kept_patches))


def _source_masks(kept_idx: np.ndarray, heights: np.ndarray, widths: np.ndarray, cfg: Config) -> dict[int, np.ndarray]:
    """{row: (H, W) `source_mask`} for the source-layout rows, one batched call per source shape."""
    keep = np.zeros((len(kept_idx), cfg.grid**2), bool)
    np.put_along_axis(keep, kept_idx.astype(np.int64), True, axis=1)
    masks = {}
    for h, w in {(int(h), int(w)) for h, w in zip(heights, widths) if h > 0}:
        rows = np.flatnonzero((heights == h) & (widths == w))
        masks.update(zip(rows.tolist(), source_mask(keep[rows], h, w, cfg.patch_image_size)))
    return masks


class PatchDropper(PatchSelector):
    """`PatchSelector` then `encode_rows` in one call: input as `PatchSelector`; output a pyarrow table with
    `dataset_schema(config.kept_patches)`, one row per image."""

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return encode_rows(super().__call__(batch), self.config)
