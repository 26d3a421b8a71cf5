"""Load model weights from a hub name, a local file or an s3:// URL, safely (weights_only)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adq_ray import storage
from adq_ray.errors import WeightsError

if TYPE_CHECKING:
    from adq_ray.config import Config

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
    try:
        checkpoint: Any = torch.load(blob, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (code in the pickle), RuntimeError/EOFError (not a checkpoint)
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        # torch's weights_only refusal names what it refused on an "Unsupported ..." line
        first = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else repr(err))
        raise WeightsError(
            f"weights {uri!r} are not a plain checkpoint of tensors (refused by torch.load(weights_only=True): "
            f"{first}); save the model with torch.save(model.state_dict(), path)"
        ) from err
    while isinstance(checkpoint, dict):
        inner = next((checkpoint[k] for k in _WRAPPER_KEYS if isinstance(checkpoint.get(k), dict)), None)
        if inner is None:
            break
        checkpoint = inner
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise WeightsError(f"{uri!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def check_weights(config: Config, extra: Iterable[str] = ()) -> None:
    """Load every weights file a run names (not `hub` or `random`) once on the driver, before any actor starts.

    A missing, unreadable or malicious file then fails in seconds, not after the listing and the first
    actors; `hub` weights are not downloaded here (the actors fetch them), but must be cached or reachable.
    """
    names = ("backbone_weights", "cam_weights") + (("contrastive_weights",) if config.contrastive else ())
    for uri in {*(getattr(config, n) for n in names), *extra}:
        if uri and uri not in (HUB, RANDOM):
            load_state_dict(uri)
    from adq_ray.models.hub import check_hub  # `hub` weights: cached, or their host reachable (seconds)

    check_hub(config)


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
