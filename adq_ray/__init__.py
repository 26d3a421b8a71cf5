"""adq-ray: Adaptive Dataset Quantization (ADQ) and Dataset Quantization (DQ) as a distributed Ray job.

The public API, imported on first use so that `import adq_ray` stays light (no Ray, no torch):

- `Config`: one validated run configuration;
- `compress(config)`: every stage, resuming from committed ones; `resample(config)`: a new sample from
  cached embeddings and bins;
- `read_reconstructed(uri, mae=...)` (a Ray dataset) and `CompressedImages(uri, mae=...)` (a torch
  dataset): the compressed images restored for training; `load_mae(name, weights)`: the MAE that paints
  the dropped patches.

Example:
    >>> import adq_ray
    >>> config = adq_ray.Config(input="s3://bucket/imagenet/train", output="s3://bucket/adq/r10", rho=0.1)
    >>> summary = adq_ray.compress(config)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_API = {
    "Config": "adq_ray.config",
    "compress": "adq_ray.pipeline",
    "resample": "adq_ray.pipeline",
    "read_reconstructed": "adq_ray.patches.reconstruct",
    "CompressedImages": "adq_ray.patches.reconstruct",
    "load_mae": "adq_ray.models.mae",
}
__all__ = ["CompressedImages", "Config", "__version__", "compress", "load_mae", "read_reconstructed", "resample"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'adq_ray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
