"""Compare arms (full data, DQ, ADQ, random at several ratios) by test accuracy: table and plot."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections import defaultdict
from typing import Any

import ray.data
from matplotlib.figure import Figure

from adq_ray import storage
from adq_ray.evaluate.train import Recipe, train_and_test

COLUMNS = ("arm", "n_train", "sample_ratio", "storage_ratio", "final_acc", "best_acc", "best_epoch", "epochs", "wall_s")
TABLE_CSV = "evaluation.csv"
TABLE_JSON = "evaluation.json"


def evaluate_arms(
    arms: dict[str, ray.data.Dataset],
    test: ray.data.Dataset,
    recipe: Recipe = Recipe(),
    *,
    metadata: dict[str, dict[str, Any]] | None = None,
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    storage_path: str | None = None,
) -> list[dict[str, Any]]:
    """Train and test one classifier per arm, one arm after another; one row per arm.

    `metadata[arm]` supplies sample_ratio and storage_ratio (and any extra columns, e.g. method);
    the row adds n_train, final_acc, best_acc, best_epoch, epochs and wall_s from training.
    """
    metadata = metadata or {}
    rows = []
    for arm, train in arms.items():
        result = train_and_test(
            train,
            test,
            recipe,
            num_workers=num_workers,
            use_gpu=use_gpu,
            cpus_per_worker=cpus_per_worker,
            storage_path=storage_path,
            name=f"adq-eval-{re.sub(r'[^A-Za-z0-9_.-]+', '-', arm)}-{uuid.uuid4().hex[:8]}",
        )
        row = {"arm": arm, "sample_ratio": None, "storage_ratio": None, **metadata.get(arm, {})}
        row.update({key: result[key] for key in COLUMNS if key in result})
        rows.append({key: row[key] for key in _columns([row])})
    return rows


def write_table(rows: list[dict[str, Any]], uri: str) -> list[str]:
    """Write the rows as `evaluation.csv` and `evaluation.json` under `uri` (local or s3://)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_uri, json_uri = storage.join(uri, TABLE_CSV), storage.join(uri, TABLE_JSON)
    storage.write_bytes(csv_uri, text.getvalue().encode())
    storage.write_bytes(json_uri, json.dumps(rows, indent=2).encode())
    return [csv_uri, json_uri]


def accuracy_png(rows: list[dict[str, Any]]) -> bytes:
    """PNG of final (solid) and best (dashed) test accuracy against the sample ratio.

    Rows sharing a `method` form one line; rows without a sample_ratio (a reference such as the
    full dataset) are drawn as horizontal lines.
    """
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = figure.add_subplot()
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        series[str(row.get("method", row["arm"]))].append(row)
    for i, (label, members) in enumerate(series.items()):
        color = f"C{i % 10}"
        points = sorted((r for r in members if r.get("sample_ratio") is not None), key=lambda r: r["sample_ratio"])
        for r in members:
            if r.get("sample_ratio") is None:
                ax.axhline(100 * r["final_acc"], color=color, linestyle=":", label=f"{r['arm']} (final)")
        if points:
            x = [100 * r["sample_ratio"] for r in points]
            ax.plot(x, [100 * r["final_acc"] for r in points], "o-", color=color, label=f"{label} (final)")
            ax.plot(x, [100 * r["best_acc"] for r in points], "x--", color=color, alpha=0.6, label=f"{label} (best)")
    ax.set_xlabel("sample ratio (% of training images kept)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    if rows:
        ax.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def plot_accuracy(rows: list[dict[str, Any]], path: str) -> None:
    """Write `accuracy_png(rows)` to `path` (local or s3://)."""
    storage.write_bytes(path, accuracy_png(rows))


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """COLUMNS first, then any extra keys in first-seen order."""
    extra = dict.fromkeys(key for row in rows for key in row if key not in COLUMNS)
    present = {key for row in rows for key in row}
    return [key for key in COLUMNS if key in present] + list(extra)
