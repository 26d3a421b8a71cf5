"""Ingest: list inputs (ImageFolder, s3:// prefix or Parquet) and decode them into rows that never fail the job."""

from adq_ray.ingest.cifar import extract_cifar_subset
from adq_ray.ingest.decode import Decoded, decode_image
from adq_ray.ingest.sources import INVENTORY_SCHEMA, Inventory, Listing, list_inputs, walk_input

__all__ = [
    "INVENTORY_SCHEMA",
    "Decoded",
    "Inventory",
    "Listing",
    "decode_image",
    "extract_cifar_subset",
    "list_inputs",
    "read_images",
    "read_input_bytes",
    "walk_input",
]

# The Ray reader loads on first use: `import adq_ray.ingest` (listing, decoding) imports no Ray.
_LAZY = {"read_images": "adq_ray.ingest.read", "read_input_bytes": "adq_ray.ingest.read"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
