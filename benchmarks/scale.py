"""Driver and bins-task memory at dataset scale, from a faked embed stage (no images, no models).

    .venv/bin/python benchmarks/scale.py --samples 1281167 --classes 1000 --dim 512      # ImageNet-1K shape
    .venv/bin/python benchmarks/scale.py --samples 14197122 --classes 21841 --driver-only # ImageNet-21K shape

Fakes a committed embed stage of `--samples` inputs in `--classes` classes (class-structured random unit
embeddings and view sums of `--dim` floats, 0.1% rejected rows, an inventory with ImageNet-like paths), then
runs the real stages on it: bins (Ray tasks), select, and the write stage's manifest + summary (the patch
stage is skipped: the selected samples are taken as kept). `--driver-only` fakes the bins stage's output too
(bins.parquet and the per-cell sums) and runs select + manifest only: the driver-side stages at a size whose
embeddings would not fit on this node's disk budget.

Prints one Markdown row per stage: wall seconds, the driver's peak RSS during the stage, and the largest peak
RSS of any Ray worker process so far (its VmHWM: the bins tasks, the first Ray work of the run). The faking
runs in a child process, so the driver's numbers are the stages' own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adq_ray import storage  # noqa: E402
from adq_ray.config import Config  # noqa: E402
from adq_ray.ingest.sources import INVENTORY_SCHEMA  # noqa: E402
from adq_ray.layout import CELLS, CLASSES, EMBEDDINGS, INVENTORY, Layout  # noqa: E402
from adq_ray.tables import fixed_size_list, write_parquet  # noqa: E402

LISTING = "scale-benchmark"  # the faked input's listing digest (keys the stage directories)
REJECTED_RATE = 0.001


# --------------------------------------------------------------------------------------------- memory


def _status_kb(pid: int | str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def ray_workers() -> list[int]:
    """Pids of this driver's Ray worker processes (descendants named `ray::...`)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    me, out = os.getpid(), []
    for pid in parent:
        p, seen = parent.get(pid), 0
        while p and p != me and seen < 64:
            p, seen = parent.get(p), seen + 1
        if p == me:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read(5) == b"ray::":
                        out.append(pid)
            except OSError:
                continue
    return out


class Peaks:
    """Samples the driver's RSS and its Ray workers' peak RSS every `interval` seconds in a thread."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.driver_kb = 0
        self.worker_kb: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ticks = 0
        while not self._stop.is_set():
            self.driver_kb = max(self.driver_kb, _status_kb("self", "VmRSS"))
            if ticks % 10 == 0:  # the /proc walk is dearer: once a second
                self.sample_workers()
            ticks += 1
            self._stop.wait(self.interval)

    def sample_workers(self) -> None:
        for pid in ray_workers():
            self.worker_kb[pid] = max(self.worker_kb.get(pid, 0), _status_kb(pid, "VmHWM"))

    def reset_driver(self) -> None:
        self.driver_kb = _status_kb("self", "VmRSS")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------------------------- faking


def class_sizes(samples: int, classes: int, seed: int) -> np.ndarray:
    """Class sizes summing to `samples`, +-25% around the mean (ImageNet's are 732-1300)."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.75, 1.25, classes)
    sizes = np.floor(weights / weights.sum() * samples).astype(np.int64)
    sizes[: samples - sizes.sum()] += 1
    return sizes


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fake_embed_stage(directory: str, samples: int, classes: int, dim: int, vectors: bool, seed: int) -> None:
    """Inventory, class names and class-partitioned embeddings as the embed stage writes them."""
    rng = np.random.default_rng(seed)
    sizes = class_sizes(samples, classes, seed)
    names = [f"n{10_000_000 + c:08d}" for c in range(classes)]
    os.makedirs(directory, exist_ok=True)
    storage.write_json(storage.join(directory, CLASSES), names)
    writer = pq.ParquetWriter(os.path.join(directory, INVENTORY), INVENTORY_SCHEMA)
    start = 0
    for c, size in enumerate(sizes):
        ids = np.arange(start, start + size, dtype=np.int64)
        start += size
        paths = [f"/data/imagenet/train/{names[c]}/{names[c]}_{i}.JPEG" for i in range(size)]
        inventory = {
            "sample_id": ids,
            "path": paths,
            "label": np.full(size, c, np.int64),
            "class_name": [names[c]] * size,
            "nbytes": rng.integers(20_000, 200_000, size),
            "reason": [""] * size,
        }
        writer.write_table(pa.table(inventory, schema=INVENTORY_SCHEMA))
        rejected = rng.random(size) < REJECTED_RATE
        rejected[: 1 if size > 20 else 0] = False
        columns = {
            "sample_id": ids,
            "status": np.where(rejected, "rejected", "ok"),
            "reason": np.where(rejected, "undecodable", ""),
            "note": [""] * size,
            "texture": np.where(rejected, 0, rng.random(size, dtype=np.float32)).astype(np.float32),
        }
        if vectors:
            centre = _unit(rng.standard_normal((1, dim), dtype=np.float32))
            embedding = _unit(centre + 0.7 * rng.standard_normal((size, dim), dtype=np.float32) / np.sqrt(dim) * 4)
            views = [_unit(embedding + 0.3 * rng.standard_normal((size, dim), dtype=np.float32) / 4) for _ in "ab"]
            for name, value in (("embedding", embedding), ("view_sum", views[0] + views[1])):
                value[rejected] = 0
                columns[name] = fixed_size_list(value.astype(np.float32))
        part = os.path.join(directory, EMBEDDINGS, f"label={c}")
        os.makedirs(part, exist_ok=True)
        pq.write_table(pa.table(columns), os.path.join(part, "part-0.parquet"))
    writer.close()


def fake_bins_stage(embed_dir: str, directory: str, num_bins: int, dim: int, seed: int) -> None:
    """bins.parquet and the per-cell sums as the bins stage writes them, without binning (random bins)."""
    rng = np.random.default_rng(seed + 1)
    os.makedirs(directory, exist_ok=True)
    root = os.path.join(embed_dir, EMBEDDINGS)
    labels = sorted(int(p.split("=")[1]) for p in os.listdir(root))
    bins_writer = cells_writer = None
    for c in labels:
        table = pq.read_table(os.path.join(root, f"label={c}"), columns=["sample_id", "status"])
        ids = table.filter(pa.compute.equal(table["status"], "ok"))["sample_id"].to_numpy()
        n = len(ids)
        bins = np.repeat(np.arange(num_bins), np.diff(np.linspace(0, n, num_bins + 1).round().astype(int)))
        rank = np.concatenate([np.arange(k) for k in np.bincount(bins, minlength=num_bins)])
        order = rng.permutation(n)
        part = pa.table(
            {
                "sample_id": ids,
                "label": np.full(n, c, np.int64),
                "bin": bins[order].astype(np.int64),
                "rank": rank[order].astype(np.int64),
            }
        )
        count = np.bincount(bins, minlength=num_bins)
        centre = _unit(rng.standard_normal((1, dim)))
        view = 1.6 * count[:, None] * centre + np.sqrt(count)[:, None] * rng.standard_normal((num_bins, dim))
        cells = pa.table(
            {
                "bin": np.arange(num_bins, dtype=np.int64),
                "label": np.full(num_bins, c, np.int64),
                "count": count.astype(np.int64),
                "texture": count * rng.uniform(0.2, 0.8, num_bins),
                "view_sum": fixed_size_list(view),
            }
        )
        bins_writer = bins_writer or pq.ParquetWriter(os.path.join(directory, "bins.parquet"), part.schema)
        cells_writer = cells_writer or pq.ParquetWriter(os.path.join(directory, CELLS), cells.schema)
        bins_writer.write_table(part)
        cells_writer.write_table(cells)
    bins_writer.close()
    cells_writer.close()
    # The real stage writes bins sorted by sample_id in one file: the faked ids are class-contiguous, so they are.


def _fake(args: argparse.Namespace, embed_dir: str, bins_dir: str) -> None:
    fake_embed_stage(embed_dir, args.samples, args.classes, args.dim, not args.driver_only, args.seed)
    if args.driver_only:
        fake_bins_stage(embed_dir, bins_dir, args.num_bins, args.dim, args.seed)


# --------------------------------------------------------------------------------------------- stages


def config_for(workdir: Path, args: argparse.Namespace) -> Config:
    (workdir / "input").mkdir(parents=True, exist_ok=True)
    return Config(
        input=str(workdir / "input"),
        output=str(workdir / "out"),
        num_bins=args.num_bins,
        rho=args.rho,
        device="cpu",
        seed=args.seed,
    )


def write_manifest(config: Config, layout: Layout) -> dict:
    """The write stage without its report: manifest and summary (the selected samples taken as kept)."""
    from adq_ray.pipeline import manifest_and_summary

    write_parquet(pa.table({"sample_id": layout.selected_ids()}), storage.join(layout.dataset, "part-0.parquet"))
    return manifest_and_summary(config, layout, {})


def run(args: argparse.Namespace) -> dict[str, object]:
    """Fake, run the stages, print the table; returns the rows and the summary (for the test)."""
    import ray

    from adq_ray.pipeline import bins_stage, select_stage

    workdir = Path(args.workdir)
    marker = workdir / "faked.json"
    shape = json.dumps([args.samples, args.classes, args.dim, args.num_bins, args.seed, args.driver_only])
    reuse = args.reuse and marker.exists() and marker.read_text() == shape
    if workdir.exists() and not reuse:
        shutil.rmtree(workdir)
    config = config_for(workdir, args)
    layout = Layout(config, LISTING)
    start = time.perf_counter()
    if reuse:  # the faked stages of an earlier run of the same shape; the stages' outputs go
        for name in ("select", *(() if args.driver_only else ("bins",))):
            shutil.rmtree(layout.stage(name), ignore_errors=True)
        shutil.rmtree(config.output.rstrip("/") + "/dataset", ignore_errors=True)
    else:
        child = multiprocessing.get_context("spawn").Process(
            target=_fake, args=(args, layout.stage("embed"), layout.stage("bins"))
        )
        child.start()
        child.join()
        if child.exitcode:
            raise RuntimeError(f"faking the stages failed (exit code {child.exitcode})")
        marker.write_text(shape)
    fake_s = time.perf_counter() - start
    started_ray = not ray.is_initialized()
    if started_ray:
        start_ray(args.num_cpus)
    peaks = Peaks()
    rows: list[dict[str, object]] = []
    steps = [] if args.driver_only else [("bins", lambda: bins_stage(config, layout.stage("bins"), layout))]
    steps += [
        ("select", lambda: select_stage(config, layout.stage("select"), layout)),
        ("manifest + summary", lambda: write_manifest(config, layout)),
    ]
    summary = None
    print(
        f"\n{args.samples:,} samples x {args.classes:,} classes x {args.dim}-d ({'driver only' if args.driver_only else 'bins + select + write'}); faked in {fake_s:.1f} s\n"
    )
    print("| stage | wall s | driver peak RSS | largest Ray worker peak RSS so far |")
    print("|---|---|---|---|", flush=True)
    baseline = _status_kb("self", "VmRSS")
    for name, step in steps:
        peaks.reset_driver()
        t = time.perf_counter()
        out = step()
        seconds = time.perf_counter() - t
        peaks.sample_workers()
        summary = out if isinstance(out, dict) else summary
        row = {
            "stage": name,
            "seconds": seconds,
            "driver_gb": max(peaks.driver_kb, _status_kb("self", "VmRSS")) / 2**20,
            "worker_gb": max(peaks.worker_kb.values(), default=0) / 2**20,
        }
        rows.append(row)
        print(f"| {name} | {seconds:.1f} | {row['driver_gb']:.2f} GB | {row['worker_gb']:.2f} GB |", flush=True)
    peaks.stop()
    hwm = _status_kb("self", "VmHWM") / 2**20
    print(
        f"\nDriver: {baseline / 2**20:.2f} GB before the stages (Python, torch, Ray client), peak {hwm:.2f} GB (VmHWM)."
    )
    if started_ray:
        ray.shutdown()
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"rows": rows, "summary": summary, "driver_peak_gb": hwm}


def start_ray(num_cpus: int, tries: int = 3) -> None:
    """ray.init, tried again: on a loaded machine the raylet can miss Ray's fixed 30 s start deadline."""
    import ray

    for attempt in range(tries):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            return
        except Exception:
            ray.shutdown()
            if attempt == tries - 1:
                raise
            time.sleep(10)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=1_281_167)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--num-bins", type=int, default=10)
    p.add_argument("--rho", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--driver-only", action="store_true", help="fake the bins stage too; run select + manifest")
    p.add_argument("--workdir", default="/tmp/adq-scale")
    p.add_argument("--keep", action="store_true", help="keep the faked stages and outputs")
    p.add_argument("--reuse", action="store_true", help="re-use the faked stages a --keep run of this shape left")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse(argv)
    print(f"{platform.node()} {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f}")
    result = run(args)
    if result["summary"]:
        counts = result["summary"]["counts"]
        print(f"Manifest: {json.dumps({k: counts[k] for k in ('inputs', 'kept', 'not_selected', 'rejected')})}")
    return result


if __name__ == "__main__":
    main()
