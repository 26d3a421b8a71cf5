"""Arrow helpers: vectors as fixed-size lists, so any Parquet reader (not only Ray) can use them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from adq_ray import storage


def fixed_size_list(values: np.ndarray) -> pa.FixedSizeListArray:
    """(n, d) array -> FixedSizeListArray of d-vectors (plain Arrow, unlike Ray's tensor extension)."""
    values = np.ascontiguousarray(values)
    n, d = values.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), d)


def to_matrix(column: pa.ChunkedArray | pa.Array, dtype=np.float32) -> np.ndarray:
    """Fixed-size (or equal-length) list column -> (n, d) array (a writable copy)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, 0), dtype=dtype)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.array(flat.reshape(len(column), -1), dtype=dtype)


def read_parquet(uri: str, columns: list[str] | None = None, read_dictionary: list[str] | None = None) -> pa.Table:
    """A Parquet file, or every Parquet file under a directory, from a local path or s3:// URL.

    read_dictionary: string columns to read as dictionary codes (a few distinct values over many rows)."""
    fs, path = storage.resolve(uri)
    return pq.read_table(path, filesystem=fs, columns=columns, read_dictionary=read_dictionary)


def write_parquet(table: pa.Table, uri: str) -> None:
    """One Parquet file at a local path or s3:// URL (parent directories created)."""
    fs, path = storage.resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs)
