"""One validated configuration for every entry point (Python API, CLI, Ray job).

Every field is checked once, here, at the edge: the stages downstream trust a `Config`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

Sampler = Literal["adq", "dq", "random"]
Features = Literal["embedding", "gradient"]
Codec = Literal["png", "jpeg", "raw"]
InputFormat = Literal["auto", "imagefolder", "parquet"]
Device = Literal["auto", "cpu", "cuda"]
DecodeDevice = Literal["cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]


class ConfigError(ValueError):
    """A configuration value is out of range or of the wrong kind."""


@dataclass(frozen=True)
class Config:
    """Everything one compression run needs; see README "Configuration" for each field."""

    input: str
    output: str
    cache: str = ""
    input_format: InputFormat = "auto"
    labeled: bool = True
    image_column: str = "image"
    label_column: str = "label"
    # Stage 1: embed and score.
    image_size: int = 224
    backbone: str = "resnet18"
    backbone_weights: str = "hub"
    features: Features = "embedding"
    contrastive: str = ""
    contrastive_weights: str = "hub"
    batch_size: int = 64
    decode_device: DecodeDevice = "cpu"
    # Stage 2: bins.
    num_bins: int = 10
    max_group: int = 20_000
    # Stage 3: quotas.
    rho: float = 0.1
    alpha: float = 0.7
    sampler: Sampler = "adq"
    seed: int = 0
    # Stage 4: patches.
    patch_image_size: int = 224
    mask_ratio: float = 0.2
    patch_size: int = 16
    cam_model: str = "resnet18"
    cam_weights: str = "hub"
    cam_layer: str = "layer4"
    cam_image_size: int = 0
    codec: Codec = "jpeg"
    jpeg_quality: int = 90
    # Input limits: larger files or images are rejected, not decoded.
    max_file_bytes: int = 64 * 2**20
    max_image_pixels: int = 89_478_485
    # Resources.
    device: Device = "auto"
    precision: Precision = "auto"
    num_actors: int = 0
    cpus_per_actor: float = 0.5

    def __post_init__(self) -> None:
        _check_types(self)
        _absolute_local_paths(self)
        _check(bool(self.input), "input must be a path or s3:// URL")
        _check(bool(self.output), "output must be a path or s3:// URL")
        _check(0.0 < self.rho <= 1.0, f"rho must be in (0, 1], got {self.rho}")
        _check(0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}")
        _check(0.0 <= self.mask_ratio < 1.0, f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        _check(self.num_bins >= 1, f"num_bins must be >= 1, got {self.num_bins}")
        _check(self.max_group >= self.num_bins, f"max_group must be >= num_bins ({self.num_bins}), got {self.max_group}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.patch_size >= 1, f"patch_size must be >= 1, got {self.patch_size}")
        _check(self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}")
        _check(
            self.patch_image_size >= self.patch_size and self.patch_image_size % self.patch_size == 0,
            f"patch_image_size ({self.patch_image_size}) must be a positive multiple of patch_size ({self.patch_size})",
        )
        _check(self.cam_image_size >= 0, f"cam_image_size must be >= 0 (0 = patch_image_size), got {self.cam_image_size}")
        _check(1 <= self.jpeg_quality <= 100, f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        _check(self.max_file_bytes > 0, "max_file_bytes must be > 0")
        _check(self.max_image_pixels > 0, "max_image_pixels must be > 0")
        _check(self.num_actors >= 0, f"num_actors must be >= 0 (0 = auto), got {self.num_actors}")
        _check(self.cpus_per_actor > 0, f"cpus_per_actor must be > 0, got {self.cpus_per_actor}")

    @property
    def grid(self) -> int:
        """Patches per side of the patch-stage image (14 for 224 px and 16 px patches)."""
        return self.patch_image_size // self.patch_size

    @property
    def kept_patches(self) -> int:
        """floor(grid^2 * (1 - mask_ratio)): 156 of 196 at the defaults."""
        return max(1, math.floor(self.grid**2 * (1.0 - self.mask_ratio) + 1e-9))

    @property
    def cache_uri(self) -> str:
        """Where stage checkpoints live: `cache`, or `<output>/_stages`."""
        return self.cache or self.output.rstrip("/") + "/_stages"

    def replace(self, **changes: Any) -> "Config":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        """Build from a mapping (YAML/JSON file, CLI), rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


_PATH_FIELDS = ("input", "output", "cache")
_WEIGHT_FIELDS = ("backbone_weights", "contrastive_weights", "cam_weights")


def _absolute_local_paths(config: Config) -> None:
    """Local paths become absolute on the driver: Ray workers run in other working directories."""
    for name in (*_PATH_FIELDS, *_WEIGHT_FIELDS):
        value = getattr(config, name)
        keyword = name in _WEIGHT_FIELDS and value in ("hub", "random")
        if value and not keyword and "://" not in value:
            object.__setattr__(config, name, os.path.abspath(os.path.expanduser(value)))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def field_types() -> dict[str, Any]:
    """Each Config field's annotation, resolved (Literal[...], int, float, bool or str)."""
    return get_type_hints(Config)


def _check_types(config: Config) -> None:
    """Check each field against its annotation (Literal choices, int/float/bool/str)."""
    for name, kind in field_types().items():
        value = getattr(config, name)
        if get_origin(kind) is Literal:
            choices = get_args(kind)
            _check(value in choices, f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        elif kind is bool:
            _check(isinstance(value, bool), f"{name} must be true or false, got {value!r}")
        elif kind is int:
            _check(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an integer, got {value!r}")
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            _check(ok, f"{name} must be a finite number, got {value!r}")
            object.__setattr__(config, name, float(value))
        elif kind is str:
            _check(isinstance(value, str), f"{name} must be a string, got {value!r}")
