"""Compare arms (full data, DQ, ADQ, random at several ratios) by test accuracy: table and plot."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import statistics
import uuid
from collections import defaultdict
from typing import Any

import ray.data
from matplotlib.figure import Figure

from adq_ray import storage
from adq_ray.evaluate import resume
from adq_ray.evaluate.train import Recipe, train_and_test

log = logging.getLogger("adq_ray")
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
    max_failures: int = 0,
    checkpoint_every: int = 5,
    keys: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Train and test one classifier per arm, one arm after another; one row per arm.

    `metadata[arm]` supplies sample_ratio and storage_ratio (and any extra columns, e.g. method);
    the row adds n_train, final_acc, best_acc, best_epoch, epochs and wall_s from training.
    `max_failures` and `checkpoint_every` go to `train_and_test` (restarts from a checkpoint).

    `keys[arm]`, a digest of what the arm's data (and the test set) depend on, makes its run resumable
    (`run_name`): a run that finished under `storage_path` is read back instead of trained, and one that
    stopped with its driver goes on from its latest checkpoint. Arms without a key train afresh.
    """
    metadata = metadata or {}
    keys = keys or {}
    if keys and storage_path is None:
        raise ValueError("evaluate_arms: keys (resumable runs) need a storage_path to keep the runs in")
    rows = []
    for arm, train in arms.items():
        name = run_name(arm, keys.get(arm), recipe, num_workers, use_gpu)
        keyed = arm in keys  # then storage_path is set (checked above)
        result = resume.finished(storage_path, name) if keyed else None
        if result is not None:
            log.info("adq evaluate: %s (seed %s) finished in an earlier run: %s", arm, recipe.seed, name)
        else:
            result = train_and_test(
                train,
                test,
                recipe,
                num_workers=num_workers,
                use_gpu=use_gpu,
                cpus_per_worker=cpus_per_worker,
                storage_path=storage_path,
                max_failures=max_failures,
                checkpoint_every=checkpoint_every,
                name=name,
            )
            if keyed:
                resume.save_result(storage_path, name, result)
        row = {"arm": arm, "sample_ratio": None, "storage_ratio": None, **metadata.get(arm, {})}
        row.update({key: result[key] for key in COLUMNS if key in result})
        rows.append({key: row[key] for key in _columns([row])})
    return rows


def run_name(arm: str, key: str | None, recipe: Recipe, num_workers: int, use_gpu: bool) -> str:
    """The Ray Train run name of `arm` trained with `recipe`: random without `key`, so the run starts afresh;
    with it, `adq-eval-<arm>-<hash of key, recipe, workers, device, adq-ray version>`, the same in a rerun.

    Ray Train V2 restores a run from the checkpoint record in `<storage_path>/<name>`: a rerun with the
    same name goes on from the latest checkpoint, and any change to the data, recipe, seed or workers
    gives a new name, so a run never resumes from another one's state.
    """
    arm_part = re.sub(r"[^A-Za-z0-9_.-]+", "-", arm)
    if key is None:
        return f"adq-eval-{arm_part}-{uuid.uuid4().hex[:8]}"
    return f"adq-eval-{arm_part}-{resume.run_digest(key, recipe, num_workers, use_gpu)}"


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


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per arm over its seeds: the arm's metadata, `seeds`, and mean and std of final/best accuracy.

    Rows keep their first-seen order; `final_std` / `best_std` are sample standard deviations (0 for one seed).
    """
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[str(row["arm"])].append(row)
    out = []
    for arm, members in groups.items():
        first = members[0]
        summary = {k: v for k, v in first.items() if k not in ("final_acc", "best_acc", "best_epoch", "wall_s", "seed")}
        for key in ("final_acc", "best_acc"):
            values = [float(r[key]) for r in members]
            summary[key] = statistics.fmean(values)
            summary[key.replace("_acc", "_std")] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary["seeds"] = len(members)
        out.append({"arm": arm, **summary})
    return out


def accuracy_png(rows: list[dict[str, Any]]) -> bytes:
    """PNG of test accuracy per arm, mean +- std over seeds (`summarize`).

    Arms at one sample ratio (`adq evaluate`): bars of the final accuracy with the best epoch's as a
    marker. Arms at several ratios (a benchmark): one line per `method` against the sample ratio, final
    solid and best dashed; rows without a sample_ratio (the full dataset) are horizontal lines.
    """
    rows = summarize(rows)
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = figure.add_subplot()
    ratios = {r["sample_ratio"] for r in rows if r.get("sample_ratio") is not None}
    if len(ratios) <= 1:
        x = range(len(rows))
        final = [100 * r["final_acc"] for r in rows]
        ax.bar(x, final, yerr=[100 * r["final_std"] for r in rows], color=[f"C{i % 10}" for i in x], capsize=4)
        ax.plot(x, [100 * r["best_acc"] for r in rows], "k_", markersize=18, label="best epoch")
        ax.set_xticks(list(x), [f"{r['arm']}\n{r.get('n_train', '')}" for r in rows], fontsize="small")
        ax.set_xlabel("arm (training images)")
        low = min(final) if final else 0
        ax.set_ylim(max(0.0, low - 15), None)
    else:
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
                px = [100 * r["sample_ratio"] for r in points]
                ax.errorbar(px, [100 * r["final_acc"] for r in points], yerr=[100 * r["final_std"] for r in points],
                            fmt="o-", color=color, capsize=3, label=f"{label} (final)")  # fmt: skip
                ax.plot(
                    px, [100 * r["best_acc"] for r in points], "x--", color=color, alpha=0.6, label=f"{label} (best)"
                )
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


def evaluation_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Display rows for the report: per arm, its images and ratios, and accuracy in % as mean +- std over seeds."""

    def pct(mean: float, std: float, seeds: int) -> str:
        return f"{100 * mean:.2f} +- {100 * std:.2f}" if seeds > 1 else f"{100 * mean:.2f}"

    def ratio(value: Any) -> str:
        return "" if value is None else f"{value:.4g}"

    return [
        {
            "arm": r["arm"],
            "train images": r.get("n_train", ""),
            "sample ratio": ratio(r.get("sample_ratio")),
            "data keep ratio": ratio(r.get("data_keep_ratio")),
            "storage ratio": ratio(r.get("storage_ratio")),
            "final acc %": pct(r["final_acc"], r["final_std"], r["seeds"]),
            "best acc %": pct(r["best_acc"], r["best_std"], r["seeds"]),
            "seeds": r["seeds"],
            "epochs": r.get("epochs", ""),
        }
        for r in summarize(rows)
    ]
