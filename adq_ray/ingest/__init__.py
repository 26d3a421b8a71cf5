"""Ingest: list inputs (ImageFolder, s3:// prefix or Parquet) and decode them into rows that never fail the job."""

from adq_ray.ingest.cifar import extract_cifar_subset
from adq_ray.ingest.decode import Decoded, decode_image
from adq_ray.ingest.read import read_images, read_input_bytes
from adq_ray.ingest.sources import INVENTORY_SCHEMA, Inventory, list_inputs

__all__ = [
    "INVENTORY_SCHEMA",
    "Decoded",
    "Inventory",
    "decode_image",
    "extract_cifar_subset",
    "list_inputs",
    "read_images",
    "read_input_bytes",
]
