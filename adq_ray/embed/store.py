"""The embedding cache: Parquet partitioned by label (`label=<c>/`), so one class is read alone."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.dataset as pads

from adq_ray import storage

_PARTITIONING = pads.partitioning(pa.schema([("label", pa.int64())]), flavor="hive")


def open_embeddings(uri: str) -> pads.Dataset:
    """The cache as a dataset, listed once: read it class by class with `read_embeddings(dataset=...)`."""
    fs, path = storage.resolve(uri)
    return pads.dataset(path, filesystem=fs, format="parquet", partitioning=_PARTITIONING)


def read_embeddings(
    uri: str,
    labels: Sequence[int] | None = None,
    columns: Sequence[str] | None = None,
    ok_only: bool = False,
    dataset: pads.Dataset | None = None,
) -> pa.Table:
    """Rows of the given classes (all when None), sorted by sample_id; partition pruning skips other classes.

    `sample_id` is always among the columns read. `dataset` (from `open_embeddings(uri)`) saves listing
    the cache again when a task reads it class by class.
    """
    dataset = dataset if dataset is not None else open_embeddings(uri)
    filters = []
    if labels is not None:
        filters.append(pads.field("label").isin(list(labels)))
    if ok_only:
        filters.append(pads.field("status") == "ok")
    expression = None
    for f in filters:
        expression = f if expression is None else expression & f
    if columns is not None:
        columns = ["sample_id", *(c for c in columns if c != "sample_id")]
    return dataset.to_table(columns=columns, filter=expression).sort_by("sample_id")
