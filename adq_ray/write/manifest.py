"""The manifest: one row per input, saying whether it was kept, not selected, or rejected and why."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def build_manifest(
    inventory: pa.Table, scores: pa.Table, bins: pa.Table, selected_ids: np.ndarray, kept_ids: np.ndarray
) -> pa.Table:
    """Join the stages' outputs on sample_id into the manifest, sorted by sample_id.

    inventory: sample_id, path, label, class_name, nbytes (every input);
    scores: sample_id, status ("ok"|"rejected"), reason, note, texture (every input);
    bins: sample_id, bin, rank (inputs that were binned); selected_ids: the sampler's choice;
    kept_ids: sample ids stored in the dataset. A selected input missing from the dataset (it could not be
    read again by the patch stage) is rejected with that reason, never dropped silently.
    """
    table = inventory.sort_by("sample_id")
    ids = table["sample_id"].to_numpy()
    scores = _aligned(scores, ids, "scores")
    b = _lookup(bins, ids, ("bin", "rank"))
    # Status as small integer codes (no Python object per row: the manifest of ImageNet-21K has 14M rows).
    ok = pc.equal(scores["status"], "ok").to_numpy(zero_copy_only=False)
    status = np.where(ok, _CODE[NOT_SELECTED], _CODE[REJECTED]).astype(np.int8)
    lost = ok & (b["bin"] < 0)
    status[lost] = _CODE[REJECTED]
    kept = np.isin(ids, kept_ids)
    status[kept] = _CODE[KEPT]
    vanished = np.isin(ids, selected_ids) & ~kept
    status[vanished] = _CODE[REJECTED]
    reason = scores["reason"].combine_chunks()
    reason = pc.if_else(pa.array(lost), "not binned", reason)
    reason = pc.if_else(pa.array(vanished), "selected, but unreadable in the patch stage", reason)
    return pa.table(
        {
            **{name: table[name] for name in ("sample_id", "label", "class_name", "nbytes")},
            "path": redact_column(table["path"]),  # an input given as s3://KEY:SECRET@bucket/ lists such paths
            "status": pa.DictionaryArray.from_arrays(status, pa.array(_STATUSES)).cast(pa.string()),
            "reason": redact_column(reason.cast(pa.string())),
            "note": scores["note"],
            "bin": pa.array(b["bin"]),
            "rank": pa.array(b["rank"]),
            "texture": scores["texture"].cast(pa.float32()),
        },
        schema=SCHEMA,
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


def _aligned(table: pa.Table, ids: np.ndarray, what: str) -> pa.Table:
    table = table.sort_by("sample_id")
    if not np.array_equal(table["sample_id"].to_numpy(), ids):
        raise ValueError(f"{what} do not cover the inputs one to one: stage outputs are inconsistent")
    return table


def _lookup(table: pa.Table, ids: np.ndarray, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Values of `columns` for each id, -1 where the id is absent."""
    out = {c: np.full(len(ids), -1, np.int64) for c in columns}
    if table.num_rows:
        pos = np.searchsorted(ids, table["sample_id"].to_numpy())
        for c in columns:
            out[c][pos] = table[c].to_numpy()
    return out
