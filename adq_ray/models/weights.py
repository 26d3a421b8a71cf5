"""Load model weights from a hub name, a local file or an s3:// URL, safely (weights_only)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adq_ray import storage

RANDOM = "random"
HUB = "hub"

_WRAPPER_KEYS = ("state_dict", "model", "module", "net")


def load_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """A flat state dict from a checkpoint file (local path or s3:// URL).

    Accepts the common wrappers ({"state_dict": ...}, {"model": ...}) and strips the `module.`
    prefix that DataParallel checkpoints carry. Loading is `weights_only=True`: no pickled code runs.
    """
    try:
        blob = storage.open_binary(uri)
    except (FileNotFoundError, OSError) as err:
        raise FileNotFoundError(f"cannot read weights from {uri!r}: {err}") from err
    checkpoint: Any = torch.load(blob, map_location="cpu", weights_only=True)
    while isinstance(checkpoint, dict):
        inner = next((checkpoint[k] for k in _WRAPPER_KEYS if isinstance(checkpoint.get(k), dict)), None)
        if inner is None:
            break
        checkpoint = inner
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{uri!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def apply_weights(model: nn.Module, uri: str, strict: bool = True) -> nn.Module:
    """Load `uri` into `model`; with strict=False, keys the model lacks (a classifier head) are dropped."""
    state = load_state_dict(uri)
    if not strict:
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing, unexpected = model.load_state_dict(state, strict=strict)
    if strict and (missing or unexpected):  # pragma: no cover - load_state_dict(strict=True) raises first
        raise ValueError(f"weights {uri!r}: missing {missing}, unexpected {unexpected}")
    return model
