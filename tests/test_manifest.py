"""The manifest, streamed in chunks, against a row-by-row reference: every input, one status each."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from adq_ray.tables import read_parquet
from adq_ray.write.manifest import SCHEMA, SLIM, build_manifest, counts, write_manifest
from adq_ray.write.summary import per_class


def stage_outputs(n: int, seed: int) -> tuple[pa.Table, pa.Table, pa.Table, np.ndarray, np.ndarray]:
    """Random stage outputs over n inputs, each table in its own shuffled order."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(n) * 3 + 1  # sparse, unsorted sample ids
    labels = rng.integers(0, 4, n)
    inventory = pa.table(
        {
            "sample_id": ids,
            "path": [f"s3://k:s@b/c{label}/{i}.jpg" for i, label in zip(ids, labels)],
            "label": labels,
            "class_name": [f"c{label}" for label in labels],
            "nbytes": rng.integers(0, 1000, n),
        }
    )
    ok = rng.random(n) < 0.8
    order = rng.permutation(n)
    scores = pa.table(
        {
            "sample_id": ids[order],
            "status": np.where(ok, "ok", "rejected")[order],
            "reason": [None if o else f"unreadable {i}" for o, i in zip(ok[order], ids[order])],
            "note": [None] * n,
            "texture": rng.random(n)[order],
        }
    )
    binned = ids[ok & (rng.random(n) < 0.9)]  # some readable inputs never binned
    bins = pa.table({"sample_id": binned, "bin": rng.integers(0, 3, len(binned)), "rank": np.arange(len(binned))})
    selected = rng.choice(binned, len(binned) // 2, replace=False)
    kept = selected[: max(0, len(selected) - 2)]  # two selected inputs vanish in the patch stage
    return inventory, scores, bins, selected, kept


def reference_rows(inventory, scores, bins, selected, kept) -> list[dict]:
    """One dict per input in sample_id order, decided row by row."""
    score = {r["sample_id"]: r for r in scores.to_pylist()}
    binned = {r["sample_id"]: r for r in bins.to_pylist()}
    rows = []
    for r in sorted(inventory.to_pylist(), key=lambda r: r["sample_id"]):
        i, s, b = r["sample_id"], score[r["sample_id"]], binned.get(r["sample_id"])
        if i in set(kept.tolist()):
            status, reason = "kept", s["reason"]
        elif i in set(selected.tolist()):
            status, reason = "rejected", "selected, but unreadable in the patch stage"
        elif s["status"] != "ok":
            status, reason = "rejected", s["reason"]
        elif b is None:
            status, reason = "rejected", "not binned"
        else:
            status, reason = "not_selected", s["reason"]
        rows.append(
            {
                "sample_id": i,
                "path": r["path"].replace("k:s@", "***@"),
                "label": r["label"],
                "class_name": r["class_name"],
                "nbytes": r["nbytes"],
                "status": status,
                "reason": reason,
                "bin": b["bin"] if b else -1,
                "rank": b["rank"] if b else -1,
            }
        )
    return rows


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 1 << 20])
def test_streamed_manifest_equals_row_by_row_reference(tmp_path, chunk_rows):
    inventory, scores, bins, selected, kept = stage_outputs(50, seed=chunk_rows)
    uri = str(tmp_path / "out" / "manifest.parquet")
    slim = write_manifest(uri, inventory, scores, bins, selected, kept, chunk_rows=chunk_rows)
    written = read_parquet(uri)
    assert written.schema == SCHEMA and written.num_rows == 50
    expected = reference_rows(inventory, scores, bins, selected, kept)
    got = written.drop_columns(["note", "texture"]).to_pylist()
    assert got == expected
    texture = dict(zip(scores["sample_id"].to_pylist(), scores["texture"].to_pylist()))
    np.testing.assert_allclose(written["texture"].to_numpy(), [texture[r["sample_id"]] for r in expected], rtol=1e-6)
    # The slim columns the summary and report read: the file's, with the status as dictionary codes.
    assert slim.column_names == list(SLIM) and pa.types.is_dictionary(slim.schema.field("status").type)
    assert slim.cast(written.select(SLIM).schema).equals(written.select(SLIM))
    assert counts(slim) == counts(written)
    assert per_class(slim) == per_class(written)
    assert build_manifest(inventory, scores, bins, selected, kept).equals(written)


def test_manifest_refuses_scores_that_do_not_cover_the_inputs(tmp_path):
    inventory, scores, bins, selected, kept = stage_outputs(10, seed=0)
    with pytest.raises(ValueError, match="one to one"):
        write_manifest(str(tmp_path / "m.parquet"), inventory, scores.slice(1), bins, selected, kept)


def test_empty_manifest_is_written(tmp_path):
    inventory, scores, bins, _, _ = stage_outputs(5, seed=1)
    empty = [t.slice(0, 0) for t in (inventory, scores, bins)]
    slim = write_manifest(str(tmp_path / "m.parquet"), *empty, np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert slim.num_rows == 0 and read_parquet(str(tmp_path / "m.parquet")).schema == SCHEMA
    assert counts(slim)["inputs"] == 0 and pc.sum(slim["nbytes"]).as_py() is None
