"""Evaluate a compressed dataset: train a classifier on each arm with Ray Train and compare.

Names are imported on first use, so `adq_ray.evaluate.loop` and `.classifier` load without Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "Recipe": "adq_ray.evaluate.loop",
    "fit": "adq_ray.evaluate.loop",
    "random_crop_flip": "adq_ray.evaluate.loop",
    "to_images": "adq_ray.evaluate.loop",
    "cifar_stem": "adq_ray.evaluate.classifier",
    "create_classifier": "adq_ray.evaluate.classifier",
    "accuracy_png": "adq_ray.evaluate.compare",
    "evaluate_arms": "adq_ray.evaluate.compare",
    "plot_accuracy": "adq_ray.evaluate.compare",
    "write_table": "adq_ray.evaluate.compare",
    "train_and_test": "adq_ray.evaluate.train",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'adq_ray.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)
