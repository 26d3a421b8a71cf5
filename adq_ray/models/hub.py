"""Whether a run's `hub` weights can be had, decided on the driver in seconds before any stage starts.

`hub` means timm's pretrained download (Hugging Face hub, or a GitHub release URL for older weights). A
weight already in the local cache is enough; otherwise the host must answer a TCP connect within
`TIMEOUT` seconds. Offline, a run then fails at once with one line, instead of in every actor after the
listing (minutes, hundreds of log lines).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from adq_ray.config import Config
from adq_ray.errors import WeightsError

TIMEOUT = 5.0
HF_FILES = ("model.safetensors", "pytorch_model.bin")
MODEL_OF = {"backbone_weights": "backbone", "cam_weights": "cam_model", "contrastive_weights": "contrastive"}


def hub_fields(config: Config) -> dict[str, str]:
    """{weights field: model name} of the fields set to `hub` (contrastive only when it has its own model)."""
    fields = {f: getattr(config, m) for f, m in MODEL_OF.items() if getattr(config, f) == "hub"}
    return {f: name for f, name in fields.items() if name}


def source(name: str) -> str | None:
    """Where timm fetches `name`'s pretrained weights: `hf-hub:<repo>` or a URL; None when it has none."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(name) else None
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        return f"hf-hub:{cfg.hf_hub_id}"
    return cfg.url or None


def cached(where: str) -> bool:
    """True when the weights at `where` (from `source`) are already in the local Hugging Face or torch cache."""
    if where.startswith("hf-hub:"):
        from huggingface_hub import try_to_load_from_cache

        repo = where.removeprefix("hf-hub:").split("@")[0]
        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in HF_FILES)
    import torch.hub

    return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(where).path)).is_file()


def unreachable(where: str, timeout: float = TIMEOUT) -> str | None:
    """Why the host serving `where` cannot be reached (offline mode, DNS, refused, timeout); None if it can."""
    if where.startswith("hf-hub:"):
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            return "HF_HUB_OFFLINE is set"
        where = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(where)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as err:
        return f"{url.hostname}: {err.strerror or err}"
    return None


def check_hub(config: Config, timeout: float = TIMEOUT) -> None:
    """Raise WeightsError, naming the field and the fix, for a `hub` weight that is neither cached nor reachable."""
    for field, name in hub_fields(config).items():
        where = source(name)
        if where is None:
            raise WeightsError(f"{field}=hub: {name!r} has no pretrained weights on the hub; pass a path or s3:// URL")
        if cached(where):
            continue
        why = unreachable(where, timeout)
        if why:
            raise WeightsError(
                f"{field}=hub: {name!r} weights download from {where}, which this machine cannot reach ({why}); "
                f"pass {field} as a local path, an s3:// URL or random, or run once online to fill the cache"
            )
