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

from adq_ray.errors import UserError
from adq_ray.redact import redact_all

Sampler = Literal["adq", "dq", "random"]
Features = Literal["embedding", "gradient"]
Codec = Literal["png", "jpeg", "raw"]
InputFormat = Literal["auto", "imagefolder", "parquet"]
Device = Literal["auto", "cpu", "cuda"]
DecodeDevice = Literal["cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
BinsDtype = Literal["float32", "float64"]


class ConfigError(UserError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


Stage = Literal["embed", "bins", "select", "patches"]


def option(default: Any, stage: Stage | None, help: str) -> Any:
    """A Config field with its cache key and help line declared together.

    `stage` is the first stage whose output the field changes (it joins that stage's fingerprint and,
    through it, every later one); None means the field changes no output (a location or a throughput knob).
    """
    return dataclasses.field(default=default, metadata={"stage": stage, "help": help})


@dataclass(frozen=True)
class Config:
    """Everything one compression run needs, validated once; see README "Configuration" for each field.

    Args:
        input: ImageFolder directory, s3:// prefix or Parquet; output: where the products go.
        **fields: every other field has a default and a help line (`adq compress --help`).

    Example:
        >>> Config(input="data/cifar10/train", output="outputs/r10", rho=0.1).kept_patches  # doctest: +SKIP
        156
    """

    # Where: the input, the output and the stage cache (`cache` is a location, never a cache key).
    input: str = option("", "embed", "ImageFolder directory or s3:// prefix (<class>/<file>), or Parquet file/prefix")
    output: str = option("", None, "output directory or s3:// prefix")
    cache: str = option("", None, "where stage checkpoints live (default <output>/_stages); share it to re-use stages")
    input_format: InputFormat = option("auto", "embed", "imagefolder, parquet, or auto (Parquet when every file is)")
    labeled: bool = option(True, "embed", "false: the whole input is one class (an unlabeled dataset)")
    image_column: str = option("image", "embed", "Parquet input: the image column (binary or {bytes} struct)")
    label_column: str = option("label", "embed", "Parquet input: the label column (int or string)")
    # Stage 1: embed and score.
    image_size: int = option(224, "embed", "side of the square image fed to the embedding and contrastive models")
    backbone: str = option("resnet18", "embed", "timm model (or cifar_resnet20/56) for the bin embedding")
    backbone_weights: str = option("hub", "embed", "backbone weights: hub (downloads), random, a path or s3:// URL")
    features: Features = option("embedding", "embed", "embedding, or gradient (DQ's last-layer gradient features)")
    contrastive: str = option("", "embed", "encoder of the two augmented views; empty = the backbone, identity head")
    contrastive_weights: str = option("hub", "embed", "contrastive encoder weights: hub, random, a path or s3:// URL")
    batch_size: int = option(
        0, None, "rows per actor call; 0 = auto: 64 on CPU, from GPU memory on CUDA (results do not depend on it)"
    )
    decode_device: DecodeDevice = option("cpu", "embed", "cuda: decode plain JPEGs with nvJPEG in the embed actors")
    # Stage 2: bins.
    num_bins: int = option(10, "bins", "N, the number of bins per class")
    max_group: int = option(20_000, "bins", "classes larger than this are split by spherical k-means before binning")
    bins_dtype: BinsDtype = option("float32", "bins", "GraphCut dtype: float32, or float64 (settles near-ties)")
    # Stage 3: quotas.
    rho: float = option(0.1, "select", "sample ratio: one global budget B = floor(rho |D| + 0.5)")
    alpha: float = option(0.7, "select", "adaptivity weight; 0 = DQ's proportional sampling")
    sampler: Sampler = option("adq", "select", "adq, dq (DQ's per-cell rounding) or random")
    seed: int = option(0, "embed", "seeds the views, the gradient head and every draw")
    # Stage 4: patches.
    patch_image_size: int = option(224, "patches", "side of the image cut into patches (the MAE's input size)")
    mask_ratio: float = option(0.2, "patches", "fraction of patches dropped: keeps floor(grid^2 (1 - mask_ratio))")
    patch_size: int = option(16, "patches", "patch side in pixels; grid = patch_image_size / patch_size")
    cam_model: str = option("resnet18", "patches", "GradCAM++ network (timm name or cifar_resnet20/56)")
    cam_weights: str = option("hub", "patches", "CAM network weights: hub, random, a path or s3:// URL")
    cam_layer: str = option("layer4", "patches", "the CAM network's layer whose maps GradCAM++ weighs")
    cam_image_size: int = option(0, "patches", "resolution the CAM network sees (0 = patch_image_size)")
    codec: Codec = option("jpeg", "patches", "kept-patch encoding: jpeg, or lossless png / raw")
    jpeg_quality: int = option(90, "patches", "JPEG quality of the kept patches (codec jpeg)")
    # Input limits: larger files or images are rejected, not decoded.
    max_file_bytes: int = option(64 * 2**20, "embed", "larger files are rejected unread")
    max_image_pixels: int = option(89_478_485, "embed", "larger images are rejected from their header")
    # Resources.
    device: Device = option("auto", "embed", "cpu or cuda (auto: cuda when the cluster has GPUs)")
    precision: Precision = option("auto", "embed", "fp32 or bf16 (auto: bf16 autocast on CUDA)")
    num_actors: int = option(0, None, "actor pool size (0 = one per GPU, else one per CPU); throughput only")
    cpus_per_actor: float = option(0.5, None, "CPU share of each CPU actor; throughput only")
    # Object storage: retries, timeouts and the stall limit (docs/RELIABILITY.md); they change no output.
    storage_attempts: int = option(5, None, "tries per object-store request and per operation (backoff with jitter)")
    connect_timeout: float = option(10.0, None, "seconds to open a connection to the object store")
    request_timeout: float = option(60.0, None, "seconds an object-store request may go without a byte moving")
    stall_seconds: float = option(120.0, None, "a stage with no progress this long fails; also caps retrying (0 = off)")

    def __post_init__(self) -> None:
        _check_types(self)
        _absolute_local_paths(self)
        _check(bool(self.input), "input must be a path or s3:// URL")
        _check(bool(self.output), "output must be a path or s3:// URL")
        _check(0.0 < self.rho <= 1.0, f"rho must be in (0, 1], got {self.rho}")
        _check(0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}")
        _check(0.0 <= self.mask_ratio < 1.0, f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(self.num_bins >= 1, f"num_bins must be >= 1, got {self.num_bins}")
        _check(
            self.max_group >= self.num_bins, f"max_group must be >= num_bins ({self.num_bins}), got {self.max_group}"
        )
        _check(self.batch_size >= 0, f"batch_size must be >= 0 (0 = auto), got {self.batch_size}")
        _check(self.patch_size >= 1, f"patch_size must be >= 1, got {self.patch_size}")
        _check(self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}")
        _check(
            self.patch_image_size >= self.patch_size and self.patch_image_size % self.patch_size == 0,
            f"patch_image_size ({self.patch_image_size}) must be a positive multiple of patch_size ({self.patch_size})",
        )
        _check(
            self.cam_image_size >= 0, f"cam_image_size must be >= 0 (0 = patch_image_size), got {self.cam_image_size}"
        )
        _check(1 <= self.jpeg_quality <= 100, f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        _check(self.max_file_bytes > 0, "max_file_bytes must be > 0")
        _check(self.max_image_pixels > 0, "max_image_pixels must be > 0")
        _check(self.num_actors >= 0, f"num_actors must be >= 0 (0 = auto), got {self.num_actors}")
        _check(self.cpus_per_actor > 0, f"cpus_per_actor must be > 0, got {self.cpus_per_actor}")
        _check(self.storage_attempts >= 1, f"storage_attempts must be >= 1, got {self.storage_attempts}")
        _check(self.connect_timeout > 0, f"connect_timeout must be > 0 seconds, got {self.connect_timeout}")
        _check(self.request_timeout > 0, f"request_timeout must be > 0 seconds, got {self.request_timeout}")
        _check(self.stall_seconds >= 0, f"stall_seconds must be >= 0 (0 = no limit), got {self.stall_seconds}")

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

    def replace(self, **changes: Any) -> Config:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The config as an artifact (config.json): credentials in URIs are masked (`redact`)."""
        return json.dumps(redact_all(self.to_dict()), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Build from a mapping (YAML/JSON file, CLI), rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
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


def field_stage(name: str) -> str | None:
    """The stage whose fingerprint a Config field joins (None: it changes no output)."""
    return _FIELDS[name].metadata["stage"]


def field_help(name: str) -> str:
    """The one-line help of a Config field (CLI --help and README)."""
    return _FIELDS[name].metadata["help"]


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
