"""The manifest: one row per input, saying whether it was kept, not selected, or rejected and why."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from adq_ray import storage
from adq_ray.redact import redact_column

KEPT = "kept"
NOT_SELECTED = "not_selected"
REJECTED = "rejected"
_STATUSES = [KEPT, NOT_SELECTED, REJECTED]
_CODE = {name: i for i, name in enumerate(_STATUSES)}

SCHEMA = pa.schema(
    [
        ("sample_id", pa.int64()),
        ("path", pa.string()),
        ("label", pa.int64()),
        ("class_name", pa.string()),
        ("nbytes", pa.int64()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("note", pa.string()),
        ("bin", pa.int64()),
        ("rank", pa.int64()),
        ("texture", pa.float32()),
    ]
)
_CODED = SCHEMA.set(SCHEMA.get_field_index("status"), pa.field("status", pa.dictionary(pa.int8(), pa.string())))
CHUNK_ROWS = 1 << 20  # manifest rows built and written at a time
SLIM = ("sample_id", "label", "class_name", "nbytes", "status", "reason", "bin")  # what summary and report read


def build_manifest(
    inventory: pa.Table, scores: pa.Table, bins: pa.Table, selected_ids: np.ndarray, kept_ids: np.ndarray
) -> pa.Table:
    """The whole manifest (SCHEMA) in memory, sorted by sample_id: `manifest_chunks` concatenated."""
    return pa.concat_tables(c.cast(SCHEMA) for c in manifest_chunks(inventory, scores, bins, selected_ids, kept_ids))


def write_manifest(
    uri: str,
    inventory: pa.Table,
    scores: pa.Table,
    bins: pa.Table,
    selected_ids: np.ndarray,
    kept_ids: np.ndarray,
    chunk_rows: int = CHUNK_ROWS,
) -> pa.Table:
    """Stream the manifest to one Parquet file at `uri` (local or s3://); returns its SLIM columns (N rows).

    The driver never holds the whole manifest: chunks of `chunk_rows` rows are built and written one at a
    time, and what is kept for the summary and the report has no path, note or texture, and the status as
    int8 dictionary codes (ImageNet-21K: 14M rows).
    """
    fs, path = storage.resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    slim = []
    with pq.ParquetWriter(path, SCHEMA, filesystem=fs) as writer:
        for chunk in manifest_chunks(inventory, scores, bins, selected_ids, kept_ids, chunk_rows):
            writer.write_table(chunk.cast(SCHEMA), row_group_size=chunk_rows)
            slim.append(chunk.select(SLIM))
    return pa.concat_tables(slim)


def manifest_chunks(
    inventory: pa.Table,
    scores: pa.Table,
    bins: pa.Table,
    selected_ids: np.ndarray,
    kept_ids: np.ndarray,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[pa.Table]:
    """Join the stages' outputs on sample_id into manifest rows, `chunk_rows` at a time in sample_id order.

    inventory: sample_id, path, label, class_name, nbytes (every input);
    scores: sample_id, status ("ok"|"rejected"), reason, note, texture (every input);
    bins: sample_id, bin, rank (inputs that were binned); selected_ids: the sampler's choice;
    kept_ids: sample ids stored in the dataset. A selected input missing from the dataset (it could not be
    read again by the patch stage) is rejected with that reason, never dropped silently.
    Chunks follow SCHEMA except for the status, int8 dictionary codes (SCHEMA's string after a cast).
    Only O(N) integer columns are computed for all rows at once; the strings are built per chunk.
    """
    ids = inventory["sample_id"].to_numpy()
    if len(ids) > 1 and np.any(ids[1:] < ids[:-1]):  # the listing is written sorted: no copy then
        inventory = inventory.sort_by("sample_id")
        ids = inventory["sample_id"].to_numpy()
    order = _alignment(scores, ids, "scores")
    b = _lookup(bins, ids, ("bin", "rank"))
    # Status as small integer codes (no Python object per row: the manifest of ImageNet-21K has 14M rows).
    ok = pc.equal(scores["status"], "ok").to_numpy(zero_copy_only=False)[order]
    status = np.where(ok, _CODE[NOT_SELECTED], _CODE[REJECTED]).astype(np.int8)
    lost = ok & (b["bin"] < 0)
    status[lost] = _CODE[REJECTED]
    kept = np.isin(ids, kept_ids)
    status[kept] = _CODE[KEPT]
    vanished = np.isin(ids, selected_ids) & ~kept
    status[vanished] = _CODE[REJECTED]
    del ok, kept
    statuses = pa.array(_STATUSES)
    for lo in range(0, max(len(ids), 1), chunk_rows):
        hi = min(lo + chunk_rows, len(ids))
        table = inventory.slice(lo, hi - lo)
        part = scores.take(pa.array(order[lo:hi]))
        codes = pa.DictionaryArray.from_arrays(pa.array(status[lo:hi]), statuses)
        reason = part["reason"].combine_chunks()
        reason = pc.if_else(pa.array(lost[lo:hi]), "not binned", reason)
        reason = pc.if_else(pa.array(vanished[lo:hi]), "selected, but unreadable in the patch stage", reason)
        yield pa.table(
            {
                **{name: table[name] for name in ("sample_id", "label", "class_name", "nbytes")},
                "path": redact_column(table["path"]),  # an input given as s3://KEY:SECRET@bucket/ lists such paths
                "status": codes,
                "reason": redact_column(reason.cast(pa.string())),
                "note": part["note"],
                "bin": pa.array(b["bin"][lo:hi]),
                "rank": pa.array(b["rank"][lo:hi]),
                "texture": part["texture"].cast(pa.float32()),
            },
            schema=_CODED,
        )


def counts(manifest: pa.Table) -> dict[str, object]:
    """Totals by status and rejections by reason, for the summary and the report."""
    status = _value_counts(manifest["status"])
    rejected = manifest.filter(pc.equal(manifest["status"], REJECTED))
    return {
        "inputs": manifest.num_rows,
        KEPT: status.get(KEPT, 0),
        NOT_SELECTED: status.get(NOT_SELECTED, 0),
        REJECTED: status.get(REJECTED, 0),
        "rejected_by_reason": dict(sorted(_value_counts(rejected["reason"]).items())),
    }


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    """Occurrences of each value of a string column, counted in Arrow."""
    pairs = pc.value_counts(column)
    return {v: int(n) for v, n in zip(pairs.field("values").to_pylist(), pairs.field("counts").to_pylist())}


def _alignment(table: pa.Table, ids: np.ndarray, what: str) -> np.ndarray:
    """Row positions (N,) that put `table` in the order of the sorted `ids`; raises unless one to one."""
    own = table["sample_id"].to_numpy()
    order = np.argsort(own, kind="stable")
    if not np.array_equal(own[order], ids):
        raise ValueError(f"{what} do not cover the inputs one to one: stage outputs are inconsistent")
    return order


def _lookup(table: pa.Table, ids: np.ndarray, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Values of `columns` for each id, -1 where the id is absent."""
    out = {c: np.full(len(ids), -1, np.int64) for c in columns}
    if table.num_rows:
        pos = np.searchsorted(ids, table["sample_id"].to_numpy())
        for c in columns:
            out[c][pos] = table[c].to_numpy()
    return out
