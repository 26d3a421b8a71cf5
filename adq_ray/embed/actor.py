"""Stage 1 as a Ray Data callable class: one model pass per image gives every score the later stages need."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from adq_ray.config import Config
from adq_ray.embed.texture import texture_level
from adq_ray.embed.views import two_views
from adq_ray.ingest.decode import decode_image
from adq_ray.models import create_model, normalize, resize, select_device
from adq_ray.tables import fixed_size_list


def autocast_dtype(config: Config, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA unless fp32 is asked for; None (plain fp32) on CPU."""
    if config.precision == "fp32" or (config.precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def decode_jpegs(blobs: Sequence[bytes], size: int, device: torch.device) -> list[torch.Tensor | None]:
    """JPEG bytes -> uint8 (3, size, size) on `device` (nvJPEG on CUDA) in one batched call; None where one fails.

    A batch the decoder refuses is retried one image at a time, so a bad file costs only itself. The
    resize is antialiased bilinear, as Pillow's in `decode_image`.
    """
    data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
    try:
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        images = [_decode_one(jpeg, device) for jpeg in data]
    return [None if image is None else resize(image[None], size)[0] for image in images]


def _decode_one(jpeg: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """One JPEG as uint8 (3, H, W), or None if the decoder refuses it."""
    try:
        return decode_jpeg(jpeg, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def dq_logit_gradient(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """g = dL/dz (B, C) for L = CrossEntropy(softmax(z), y), as DQ's `calc_gradient` (spec section 1).

    DQ applies its cross-entropy to the softmax outputs p = softmax(z), so with v = softmax(p) - onehot(y)
    the chain rule through softmax's Jacobian diag(p) - p p^T gives g = p * (v - <p, v>). y is the true
    label; None (unlabeled data) uses the predicted class argmax z. In the logits' dtype.
    """
    target = logits.argmax(1) if labels is None else labels.long()
    p = logits.softmax(1)
    v = p.softmax(1) - F.one_hot(target, logits.shape[1]).to(p.dtype)
    return p * (v - (p * v).sum(1, keepdim=True))


class Embedder:
    """`map_batches` callable: images -> embedding, texture level, summed view vectors (and DQ gradients).

    Columns in: sample_id, label, status, reason, note, image (uint8 B,S,S,3) [, bytes: JPEGs to decode here].
    Columns out: sample_id, label, status, reason, note, texture, embedding, view_sum [, grad].
    Rejected rows pass through with zero scores so that every input reaches the manifest.
    """

    def __init__(self, config: Config, num_classes: int) -> None:
        self.config = config
        self.device = select_device(config.device)
        self.amp = autocast_dtype(config, self.device)
        self.backbone = self._load(config.backbone, config.backbone_weights)
        same = not config.contrastive or (config.contrastive, config.contrastive_weights) == (
            config.backbone,
            config.backbone_weights,
        )
        self.contrastive = self.backbone if same else self._load(config.contrastive, config.contrastive_weights)
        self.head = self._gradient_head(num_classes) if config.features == "gradient" else None
        self.widths = {"embedding": self.backbone.num_features, "view_sum": self.contrastive.num_features}
        if self.head is not None:
            self.widths["grad"] = self.head.out_features

    def _load(self, name: str, weights: str) -> torch.nn.Module:
        model = create_model(name, weights).to(self.device)
        return model.to(memory_format=torch.channels_last) if self.device.type == "cuda" else model

    def _gradient_head(self, num_classes: int) -> torch.nn.Linear:
        """DQ's randomly initialised C-way head, seeded so every actor holds the same one."""
        generator = torch.Generator().manual_seed(self.config.seed)
        head = torch.nn.Linear(self.backbone.num_features, max(num_classes, 1))
        bound = 1.0 / head.in_features**0.5
        head.weight.data.uniform_(-bound, bound, generator=generator)
        head.bias.data.uniform_(-bound, bound, generator=generator)
        return head.to(self.device)

    def _pooled(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (timm's pre-logits), fp32."""
        x = normalize(images)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            out = model.forward_head(model.forward_features(x), pre_logits=True)
        return out.float()

    @torch.inference_mode()
    def embed(
        self, images: torch.Tensor, sample_ids: np.ndarray, labels: np.ndarray | None = None
    ) -> dict[str, torch.Tensor]:
        """uint8 (B,3,S,S) -> {texture (B,), embedding (B,d), view_sum (B,d') [, grad (B,C)]}.

        grad uses the true `labels` (B,) when the config is labeled and they are given, else the predicted class.
        """
        images = images.to(self.device, non_blocking=True)
        unit = images.float() / 255.0
        out = {"texture": texture_level(unit).float(), "embedding": self._pooled(self.backbone, images)}
        views = F.normalize(self._pooled(self.contrastive, two_views(unit, sample_ids, self.config.seed)), dim=1)
        b = images.shape[0]
        out["view_sum"] = views[:b] + views[b:]
        if self.head is not None:
            logits = self.head(out["embedding"])
            known = labels is not None and self.config.labeled
            target = torch.as_tensor(np.asarray(labels), device=self.device) if known else None
            out["grad"] = dq_logit_gradient(logits, target)
        return out

    def _decode_deferred(self, blobs: np.ndarray, images: torch.Tensor, columns: dict[str, np.ndarray]) -> None:
        """Decode the rows that ingest left as JPEG `blobs` into `images` (uint8 B,3,S,S on this actor's device).

        A JPEG the device decoder refuses is decoded by Pillow (`decode_image`), whose verdict, an image or a
        rejection with its reason, is the CPU path's: the accounting never depends on the decoder.
        """
        cfg = self.config
        rows = [i for i, blob in enumerate(blobs) if len(blob)]
        for i, image in zip(rows, decode_jpegs([blobs[i] for i in rows], cfg.image_size, self.device)):
            if image is not None:
                images[i] = image
                continue
            result = decode_image(blobs[i], cfg.image_size, cfg.max_image_pixels, cfg.max_file_bytes)
            columns["status"][i] = "ok" if result.ok else "rejected"
            columns["reason"][i], columns["note"][i] = result.reason, result.note
            if result.ok:
                images[i] = torch.tensor(result.image).permute(2, 0, 1)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        # Object arrays: a deferred JPEG's status may become "rejected", longer than a fixed-width "ok".
        columns = {k: batch[k] for k in ("sample_id", "label")}
        columns |= {k: np.array(batch[k], dtype=object) for k in ("status", "reason", "note")}
        images = torch.from_numpy(np.array(batch["image"])).permute(0, 3, 1, 2)
        if "bytes" in batch:
            images = images.to(self.device)
            self._decode_deferred(batch["bytes"], images, columns)
        ok = columns["status"] == "ok"
        n = len(ok)
        full = {"texture": np.zeros(n, np.float32)}
        full |= {name: np.zeros((n, width), np.float32) for name, width in self.widths.items()}
        if ok.any():
            labels = np.asarray(batch["label"])[ok]
            for name, value in self.embed(images[torch.from_numpy(ok)], batch["sample_id"][ok], labels).items():
                full[name][ok] = value.cpu().numpy()
        table = pa.table({k: pa.array(np.asarray(v)) for k, v in columns.items()})
        table = table.append_column("texture", pa.array(full.pop("texture")))
        for name, value in full.items():
            table = table.append_column(name, fixed_size_list(value))
        return table
