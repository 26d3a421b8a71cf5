"""Ray plumbing for ingest: read raw bytes in parallel, decode in tasks, keep every input as a row.

Each decode task reads the bytes of its own listed files (not Ray's `read_images`, which fails the
whole dataset on one corrupt file and skips unknown extensions) and decodes them with `decode_image`,
so a bad input becomes a "rejected" row that flows on to the manifest. Only what is wrong with one object
is rejected (corrupt, empty, too big, not an image, gone after listing, forbidden); a transient storage
error is retried (`storage.retry`) and, if it outlives the retries, fails the task and so the stage.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data.extensions import ArrowTensorArray

from adq_ray import resources, storage
from adq_ray.config import Config
from adq_ray.ingest.decode import UNLABELED, Decoded, decode_image, too_large, unreadable
from adq_ray.ingest.sources import PARQUET_ROW, Inventory, image_bytes, parquet_rows

DECODE_BATCH = 64  # rows per decode call: 64 x 224 x 224 x 3 bytes = 9.6 MB of output
READ_THREADS = 16  # concurrent file reads per decode task


def read_images(config: Config, inventory: Inventory, defer_jpeg: bool = False) -> ray.data.Dataset:
    """One row per inventory row: sample_id, label, image, status ("ok"|"rejected"), reason, note.

    `image` is uint8 (image_size, image_size, 3), zeros for rejected rows. Any subset of an
    inventory works. Inputs over `max_file_bytes` by their listed size, and unlabeled inputs when
    `labeled`, are rejected without being read. Output order is not guaranteed: sort by sample_id
    where order matters. With `defer_jpeg` (decode_device "cuda"), plain JPEGs are not decoded: their
    rows are "ok" with a zero `image` and the encoded file in an extra `bytes` column (empty in every
    other row), for the embed actor to decode on its device.
    """
    table, limits, fs = inventory.table, _limits(config, defer_jpeg), storage.resolve(config.input)[0]
    skip = pc.or_(pc.greater(table["nbytes"], config.max_file_bytes), pc.not_equal(table["reason"], ""))
    if config.labeled:
        skip = pc.or_(skip, pc.less(table["label"], 0))
    in_parquet = parquet_rows(table["path"])
    files = table.filter(pc.invert(pc.or_(skip, in_parquet)))
    rows = table.filter(pc.and_not(in_parquet, skip))
    skipped = table.filter(skip)
    parts = []
    if files.num_rows:
        parts.append(_read_files(files, fs, limits))
    if rows.num_rows:
        parts.append(_read_parquet_rows(rows, fs, config.image_column, limits))
    if skipped.num_rows:
        listed = ray.data.from_arrow(skipped.select(["sample_id", "label", "nbytes", "reason"]))
        parts.append(listed.map_batches(_reject_listed, **_map_options(limits)))
    if not parts:
        return ray.data.from_arrow(to_rows([], [], [], config.image_size, defer_jpeg))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def read_input_bytes(config: Config, path: str) -> bytes:
    """The encoded bytes of one input named by its inventory path (a file, or `<file>#<row>`)."""
    found = pc.extract_regex(pa.array([path]), PARQUET_ROW)[0]
    if not found.is_valid:
        return storage.read_bytes(path)
    fs, file = storage.resolve(found["file"].as_py())
    row = int(found["row"].as_py())
    with pq.ParquetFile(storage.retry(fs.open_input_file, file, what=f"read {file}")) as pf:
        for group in range(pf.num_row_groups):
            size = pf.metadata.row_group(group).num_rows
            if row < size:
                column = pf.read_row_group(group, columns=[config.image_column]).column(0).combine_chunks()
                return image_bytes(column)[row].as_py() or b""
            row -= size
    raise IndexError(f"no such row: {path}")


def to_rows(
    sample_ids: Sequence[int], labels: Sequence[int], results: Sequence[Decoded], size: int, with_bytes: bool = False
) -> pa.Table:
    """The output columns for one batch of decode results (zeros where not decoded) [, `bytes` of deferred JPEGs]."""
    image = np.zeros((len(results), size, size, 3), np.uint8)
    for i, r in enumerate(results):
        if r.image is not None:
            image[i] = r.image
    columns = {
        "sample_id": pa.array(sample_ids, pa.int64()),
        "label": pa.array(labels, pa.int64()),
        "image": ArrowTensorArray.from_numpy(image),
        "status": pa.array(["ok" if r.ok else "rejected" for r in results], pa.string()),
        "reason": pa.array([r.reason for r in results], pa.string()),
        "note": pa.array([r.note for r in results], pa.string()),
    }
    if with_bytes:
        columns["bytes"] = pa.array([r.data for r in results], pa.large_binary())
    return pa.table(columns)


def _limits(config: Config, defer_jpeg: bool) -> dict[str, int]:
    """`decode_image`'s keyword arguments."""
    return {
        "size": config.image_size,
        "max_pixels": config.max_image_pixels,
        "max_bytes": config.max_file_bytes,
        "defer_jpeg": defer_jpeg,
    }


def _map_options(limits: dict[str, int], **fn_kwargs) -> dict:
    """Task-based decode (no actors) at fractional CPUs, numpy batches in, Arrow tables out."""
    return {
        "batch_size": DECODE_BATCH,
        "batch_format": "numpy",
        **resources.decode_options(),
        "fn_kwargs": {"limits": limits, **fn_kwargs},
    }


def _fs_path(uri: str) -> str:
    """The path inside the filesystem that `storage.resolve` returns for a listing URI."""
    return uri.split("://", 1)[-1]


def _read_files(table: pa.Table, fs: pafs.FileSystem, limits: dict[str, int]) -> ray.data.Dataset:
    """The listed files as blocks of (sample_id, label, path); each decode task reads its own files.

    The listing travels with the data, so no path index is shipped to every task (1.3M ImageNet paths
    would be ~100 MB each), and a batch's reads overlap on a thread pool (object-store latency, not
    bandwidth, bounds small files). A file that cannot be read is rejected like one that cannot be decoded.
    """
    listed = pa.table(
        {
            "sample_id": table["sample_id"],
            "label": table["label"],
            "path": pa.array([_fs_path(p) for p in table["path"].to_pylist()], pa.string()),
        }
    )
    blocks = max(1, -(-listed.num_rows // (4 * DECODE_BATCH)))
    return ray.data.from_arrow(listed, override_num_blocks=blocks).map_batches(
        _decode_files, **_map_options(limits, filesystem=fs, policy=storage.policy())
    )


def _decode_files(
    batch: dict[str, np.ndarray], filesystem: pafs.FileSystem, policy: storage.RetryPolicy, limits: dict[str, int]
) -> pa.Table:
    """Read a batch's files concurrently, then decode each (a file gone or forbidden becomes a rejection).

    A storage error that is not about the file itself fails the batch: `StorageError` naming the first
    such file and how many of the batch's files failed.
    """
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        blobs = list(pool.map(partial(_read_file, filesystem, policy), batch["path"]))
    failed = [blob for blob in blobs if isinstance(blob, storage.StorageError)]
    if failed:
        first = failed[0]
        raise type(first)(first.what, first.error, len(failed), first.tries, first.seconds)
    results = [blob if isinstance(blob, Decoded) else decode_image(blob, **limits) for blob in blobs]
    return to_rows(batch["sample_id"], batch["label"], results, limits["size"], limits["defer_jpeg"])


def _read_file(filesystem: pafs.FileSystem, policy: storage.RetryPolicy, path: str) -> bytes | Decoded | Exception:
    """The file's bytes; a rejection if the file itself is the problem; else the `StorageError` to raise."""
    try:
        return storage.retry(storage.read_all, filesystem, path, what=f"read {path}", policy=policy)
    except storage.StorageError as err:
        return err
    except OSError as err:
        if isinstance(filesystem, pafs.LocalFileSystem) or storage.is_permanent(err):
            return Decoded.rejected(unreadable(err))
        return storage.StorageError(f"read {path}", str(err))


def _reject_listed(batch: dict[str, np.ndarray], limits: dict[str, int]) -> pa.Table:
    """Rejections decided from the listing alone: not a regular file (never opened), over the byte limit, or unlabeled."""
    results = [
        Decoded.rejected(listed or (too_large(n, limits["max_bytes"]) if n > limits["max_bytes"] else UNLABELED))
        for n, listed in zip(batch["nbytes"], batch["reason"])
    ]
    return to_rows(batch["sample_id"], batch["label"], results, limits["size"], limits["defer_jpeg"])


def _read_parquet_rows(table: pa.Table, fs: pafs.FileSystem, column: str, limits: dict[str, int]) -> ray.data.Dataset:
    """One task per Parquet file reads its image column and decodes the listed rows.

    Ray's `read_parquet` does not say which row of a file a record came from, so its output could
    not be joined to `<file>#<row>` sample ids; reading per file keeps that identity.
    """
    where = pc.extract_regex(table["path"], PARQUET_ROW).combine_chunks()
    rows = pa.table(
        {
            "file": where.field("file"),
            "row": where.field("row").cast(pa.int64()),
            "sample_id": table["sample_id"],
            "label": table["label"],
        }
    )
    lists = [("row", "list"), ("sample_id", "list"), ("label", "list")]
    units = rows.group_by("file", use_threads=False).aggregate(lists)
    units = units.set_column(0, "file", pa.array([_fs_path(f) for f in units["file"].to_pylist()], pa.string()))
    options = {
        **_map_options(limits, filesystem=fs, column=column, policy=storage.policy()),
        "batch_size": 1,
        "batch_format": "pyarrow",
    }
    return ray.data.from_arrow(units, override_num_blocks=units.num_rows).map_batches(_decode_parquet_file, **options)


def _decode_parquet_file(
    units: pa.Table, filesystem: pafs.FileSystem, column: str, policy: storage.RetryPolicy, limits: dict[str, int]
) -> Iterator[pa.Table]:
    """Stream a file's image column in batches and decode the listed rows (a null image is empty)."""
    for unit in units.to_pylist():
        wanted = np.asarray(unit["row_list"], np.int64)
        order = np.argsort(wanted)
        wanted = wanted[order]
        sample_ids = np.asarray(unit["sample_id_list"], np.int64)[order]
        labels = np.asarray(unit["label_list"], np.int64)[order]
        start, what = 0, f"read {unit['file']}"
        source = storage.retry(filesystem.open_input_file, unit["file"], what=what, policy=policy)
        try:
            with pq.ParquetFile(source) as pf:
                for batch in pf.iter_batches(batch_size=DECODE_BATCH, columns=[column]):
                    lo, hi = np.searchsorted(wanted, [start, start + batch.num_rows])
                    if hi > lo:
                        blobs = image_bytes(batch.column(0)).take(pa.array(wanted[lo:hi] - start))
                        results = [decode_image(blob or b"", **limits) for blob in blobs.to_pylist()]
                        yield to_rows(sample_ids[lo:hi], labels[lo:hi], results, limits["size"], limits["defer_jpeg"])
                    start += batch.num_rows
        except OSError as err:  # the SDK's retries are spent: the rows of this file are not read
            kind = storage.TransientStorageError if storage.is_transient(err) else storage.StorageError
            raise kind(what, str(err), len(wanted), policy.attempts) from err
