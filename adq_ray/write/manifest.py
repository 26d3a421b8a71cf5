"""The manifest: one row per input, saying whether it was kept, not selected, or rejected and why."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KEPT = "kept"
NOT_SELECTED = "not_selected"
REJECTED = "rejected"

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
    status = np.where(scores["status"].to_numpy(zero_copy_only=False) == "ok", NOT_SELECTED, REJECTED).astype(object)
    reason = scores["reason"].to_numpy(zero_copy_only=False).astype(object)
    binned = b["bin"] >= 0
    lost = (status == NOT_SELECTED) & ~binned
    status[lost], reason[lost] = REJECTED, "not binned"
    kept = np.isin(ids, kept_ids)
    status[kept] = KEPT
    vanished = np.isin(ids, selected_ids) & ~kept
    status[vanished], reason[vanished] = REJECTED, "selected, but unreadable in the patch stage"
    return pa.table(
        {
            **{name: table[name] for name in ("sample_id", "path", "label", "class_name", "nbytes")},
            "status": pa.array(status, pa.string()),
            "reason": pa.array(reason, pa.string()),
            "note": scores["note"],
            "bin": pa.array(b["bin"]),
            "rank": pa.array(b["rank"]),
            "texture": scores["texture"].cast(pa.float32()),
        },
        schema=SCHEMA,
    )


def counts(manifest: pa.Table) -> dict[str, object]:
    """Totals by status and rejections by reason, for the summary and the report."""
    status = Counter(manifest["status"].to_pylist())
    rejected = manifest.filter(pc.equal(manifest["status"], REJECTED))
    return {
        "inputs": manifest.num_rows,
        KEPT: status.get(KEPT, 0),
        NOT_SELECTED: status.get(NOT_SELECTED, 0),
        REJECTED: status.get(REJECTED, 0),
        "rejected_by_reason": dict(sorted(Counter(rejected["reason"].to_pylist()).items())),
    }


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
