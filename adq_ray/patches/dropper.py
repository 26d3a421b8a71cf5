"""Ray Data stage: score patches with GradCAM++, keep the most important ones, encode them compactly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from adq_ray.config import Config
from adq_ray.models import create_model, normalize, resize, select_device
from adq_ray.patches.codec import dataset_schema, encode_patches
from adq_ray.patches.gradcam import GradCAMPlusPlus
from adq_ray.patches.grid import patchify, top_patches


class PatchDropper:
    """Callable class for `map_batches(PatchDropper, fn_constructor_args=(config,), compute=ActorPoolStrategy(...))`.

    Input batch (numpy): `sample_id` int64, `label` int64, `image` uint8 (B, S, S, 3) with
    S = config.patch_image_size (other columns are ignored). Output: a pyarrow table with
    `dataset_schema(config.kept_patches)`, one row per image.
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
        self.schema = dataset_schema(config.kept_patches)

    def _cam_input(self, x: torch.Tensor) -> torch.Tensor:
        """The image at the CAM model's own resolution (`cam_image_size`), e.g. 32 px for a CIFAR network.

        A CNN run far from its training resolution gives CAMs that miss the object; the CAM is resized to
        the patch grid either way, so only the scale the network sees changes.
        """
        size = self.config.cam_image_size
        if not size or size == x.shape[-1]:
            return x
        return resize(x, size)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        cfg = self.config
        images = np.asarray(batch["image"])
        if len(images) == 0:
            return self.schema.empty_table()
        size = cfg.patch_image_size
        if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"expected uint8 images (B, {size}, {size}, 3), got {images.dtype} {images.shape}")
        writable = np.require(images, requirements="W")  # Ray hands read-only arrays; torch warns on those
        x = torch.from_numpy(writable).to(self.device).permute(0, 3, 1, 2)
        scores = self.cam(normalize(self._cam_input(x)), cfg.grid).flatten(1)
        kept = top_patches(scores, cfg.kept_patches)
        patches = patchify(x, cfg.patch_size)  # (B, L, 3, p, p) uint8
        chosen = patches[torch.arange(len(x), device=x.device)[:, None], kept]
        chosen = chosen.permute(0, 1, 3, 4, 2).cpu().numpy()  # (B, K, p, p, 3)
        kept_idx = kept.cpu().numpy().astype(np.int16)
        blobs = [encode_patches(c, cfg.codec, cfg.jpeg_quality) for c in chosen]
        n = len(blobs)
        columns = {
            "sample_id": np.asarray(batch["sample_id"], dtype=np.int64),
            "label": np.asarray(batch["label"], dtype=np.int64),
            "kept_idx": pa.FixedSizeListArray.from_arrays(pa.array(kept_idx.ravel()), cfg.kept_patches),
            "patches": pa.array(blobs, type=pa.binary()),
            "codec": pa.array([cfg.codec] * n, type=pa.string()),
            "patch_size": np.full(n, cfg.patch_size, dtype=np.int32),
            "image_size": np.full(n, size, dtype=np.int32),
            "nbytes": np.array([len(b) for b in blobs], dtype=np.int64) + kept_idx.shape[1] * kept_idx.itemsize,
        }
        return pa.table(columns, schema=self.schema)
