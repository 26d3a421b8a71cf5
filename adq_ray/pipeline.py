"""The compression job, stage by stage: embed -> bins -> select -> patches -> write.

Each stage is a checkpoint. Its output is committed atomically (`storage.commit`) under a directory keyed
by a fingerprint of the config fields it and the stages before it depend on, and of the input listing
(paths, sizes, mtimes: an added, removed or changed input re-runs what depends on it), so:
  - an interrupted run resumes after the last committed stage;
  - a new rho / alpha / sampler re-uses the embeddings and bins (no model runs, no re-binning);
  - nothing half-written ever looks complete (`_SUCCESS` is written last, the output's own last of all).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import ray
import torch

from adq_ray import ownership, storage
from adq_ray.bins.remote import read_bin_sums, run_bins
from adq_ray.config import Config, ConfigError
from adq_ray.embed.actor import Embedder
from adq_ray.embed.store import read_embeddings
from adq_ray.errors import InputError
from adq_ray.ingest import Inventory, Listing, list_inputs, read_images, walk_input
from adq_ray.layout import BIN_TABLE, BINS, CELLS, CONFIG, EMBEDDINGS, SELECTION, STAGES, Layout
from adq_ray.models.weights import check_weights
from adq_ray.patches.dropper import PatchSelector, encode_rows
from adq_ray.patches.source import read_sources
from adq_ray.quotas import select
from adq_ray.quotas.adq import budget
from adq_ray.redact import redact, redact_all
from adq_ray.resources import actor_options, batch_size, decode_options, gpus, init_ray
from adq_ray.tables import read_parquet, to_matrix, write_parquet
from adq_ray.watchdog import watch
from adq_ray.write import summary as summarize
from adq_ray.write.manifest import write_manifest

log = logging.getLogger("adq_ray")
PATCH_TASK_BATCH = 64  # rows per patch-stage decode / encode task call


@dataclass
class Run:
    """One invocation: which stages ran or were re-used, and how long each took."""

    config: Config
    stages: dict[str, dict[str, object]] = field(default_factory=dict)
    listing: str | None = None  # the input listing's digest (None: list the input when a stage path is needed)
    lock: ownership.OutputLock | None = None

    @property
    def layout(self) -> Layout:
        return Layout(self.config, self.listing)

    def stage(self, name: str, directory: str, body: Callable[[str], None]) -> None:
        """Run `body(staging_dir)` and commit it to `directory`, unless a committed copy already exists."""
        key = self.layout.fingerprint(name)
        shown = redact(directory)
        if (
            storage.is_committed(directory)
            and storage.read_json(storage.join(directory, storage.SUCCESS)).get("fingerprint") == key
        ):
            log.info("stage %s: re-using %s", name, shown)
            self.stages[name] = {"reused": True, "seconds": 0.0, "path": shown}
            return
        log.info("stage %s: running -> %s", name, shown)
        start = time.perf_counter()
        staging = storage.staging_dir(directory)
        try:
            ownership.mark_staging(staging)
            with watch(self.config, name):  # retries, stall limit, one-line storage errors
                body(staging)
            if self.lock is not None:
                self.lock.check()
        except BaseException:
            try:
                storage.remove(staging)
            except Exception as cleanup:  # never mask the error that stopped the stage
                log.warning("stage %s: could not remove %s: %s", name, shown, redact(str(cleanup)))
            raise
        with watch(self.config, name):
            storage.commit(staging, directory, {"stage": name, "fingerprint": key})
        self.stages[name] = {"reused": False, "seconds": round(time.perf_counter() - start, 3), "path": shown}
        log.info("stage %s: done in %.1f s", name, self.stages[name]["seconds"])


def compress(config: Config, until: str = "write", overwrite: bool = False) -> dict[str, object]:
    """Run every stage up to and including `until`; returns the summary (also written to the output).

    Args:
        config: the run (`Config`); starts a local Ray unless one is running or reachable.
        until: the last stage to run: embed, bins, select, patches or write (all).
        overwrite: allow a non-empty output that adq-ray did not create (see below).

    Returns:
        The summary dict (counts, ratios, bytes, seconds per stage) once `write` ran.

    Example:
        >>> import adq_ray
        >>> config = adq_ray.Config(input="data/cifar10/train", output="outputs/r10", backbone="cifar_resnet20",
        ...                         backbone_weights="random", cam_model="cifar_resnet20", cam_weights="random",
        ...                         cam_layer="layer3", image_size=32)  # doctest: +SKIP
        >>> adq_ray.compress(config)["sample_ratio"]  # doctest: +SKIP

    Before any work: the weights load on the driver, the input is listed, the locations are checked
    (`ownership.check_paths`) and the output's lock is taken; a foreign non-empty output is refused
    unless `overwrite` (which then replaces only adq-ray's own products in it).
    """
    if until not in STAGES:
        raise ConfigError(f"until must be one of {', '.join(STAGES)}, got {until!r}")
    storage.configure(storage.RetryPolicy.of(config))  # this run's retries and timeouts, from its first call
    ownership.check_paths(config)
    ownership.check_output(config, overwrite)  # read-only: refuse a foreign output before listing
    check_weights(config)
    with watch(config, "list"):
        listing = walk_input(config)
    with ownership.OutputLock(config.output) as lock:
        ownership.claim_output(config, overwrite)
        ownership.clean_staging(config)
        if not ray.is_initialized():
            init_ray()
        storage.remove(storage.join(config.output, storage.SUCCESS))  # the output is about to change
        return _run(Run(config, listing=listing.digest, lock=lock), listing, until)


def _run(run: Run, listing: Listing, until: str) -> dict[str, object]:
    config, layout = run.config, run.layout
    steps: dict[str, tuple[str, Callable[[str], None]]] = {
        "embed": (layout.stage("embed"), lambda d: embed_stage(config, d, listing)),
        "bins": (layout.stage("bins"), lambda d: bins_stage(config, d, layout)),
        "select": (layout.stage("select"), lambda d: select_stage(config, d, layout)),
        "patches": (layout.dataset, lambda d: patches_stage(config, d, layout)),
    }
    for name in STAGES[: STAGES.index(until) + 1]:
        if name == "write":
            with watch(config, "write"):
                return write_stage(run)
        run.stage(name, *steps[name])
    return {"stages": run.stages, "complete": False}


def _write_dataset(ds: ray.data.Dataset, uri: str, **kwargs: object) -> None:
    fs, path = storage.resolve(uri)
    ds.write_parquet(path, filesystem=fs, **kwargs)


def embed_stage(config: Config, out: str, listing: Listing | None = None) -> None:
    """List and decode every input, then embed and score it in an actor pool; cache by class."""
    inventory = list_inputs(config, listing)
    Layout(config).save_inventory(inventory, out)
    # decode_device "cuda": plain JPEGs reach the actors as bytes, for nvJPEG (the patch stage decodes on CPUs).
    ds = read_images(config, inventory, defer_jpeg=config.decode_device == "cuda").map_batches(
        Embedder,
        fn_constructor_kwargs={"config": config, "num_classes": len(inventory.classes)},
        batch_size=batch_size(config, "embed"),
        **actor_options(config),
    )
    _write_dataset(ds, storage.join(out, EMBEDDINGS), partition_cols=["label"])


def bins_stage(config: Config, out: str, layout: Layout | None = None) -> None:
    """GraphCut bins per class (one Ray task per group of classes)."""
    layout = layout or Layout(config)
    labels = read_embeddings(layout.embeddings, columns=["label"], ok_only=True)["label"].to_numpy()
    if labels.size == 0:
        raise InputError("no readable image in the input: nothing to bin (see the rejected rows of the inventory)")
    values, sizes = np.unique(labels, return_counts=True)
    class_sizes = {int(c): int(n) for c, n in zip(values, sizes)}
    small = {c: n for c, n in class_sizes.items() if n < config.num_bins}
    if small:
        names = layout.load_inventory().classes
        listed = ", ".join(f"{names[c]!r} ({n})" for c, n in sorted(small.items())[:10])
        raise InputError(
            f"{len(small)} class(es) have fewer readable images than num_bins={config.num_bins}: {listed}; "
            "lower num_bins or leave those classes out (the embeddings are cached, so only binning re-runs)"
        )
    bins, cells = run_bins(
        layout.embeddings,
        class_sizes,
        config.num_bins,
        config.max_group,
        config.features,
        config.seed,
        gpus(config),
        dtype=config.bins_dtype,
    )
    write_parquet(bins, storage.join(out, BINS))
    write_parquet(cells, storage.join(out, CELLS))


def select_stage(config: Config, out: str, layout: Layout | None = None) -> None:
    """Per-bin scores, quotas from one global budget, and the seeded draw (on the driver).

    The driver reads O(n) integer columns and the bins stage's per-cell sums, never a per-sample vector.
    """
    layout = layout or Layout(config)
    ids = read_embeddings(layout.embeddings, columns=["sample_id"], ok_only=True)["sample_id"].to_numpy()
    if budget(len(ids), config.rho) == 0:
        raise InputError(
            f"rho={config.rho} of {len(ids)} readable images is a budget of 0 images "
            f"(B = floor(rho * n + 0.5)); raise rho to at least {0.5 / max(len(ids), 1):.3g}"
        )
    bins = read_parquet(layout.bins, columns=["sample_id", "label", "bin"]).sort_by("sample_id")
    if not np.array_equal(bins["sample_id"].to_numpy(), ids):
        raise ValueError("bins and embeddings disagree on the samples: delete the cache and re-run")
    if not storage.exists(layout.cells):
        raise ValueError(
            f"{redact(layout.cells)} is missing (a bins cache from an older adq-ray): delete it and re-run"
        )
    selection = select(
        _tensor(bins["bin"]),
        _tensor(bins["label"]),
        sums=read_bin_sums(layout.cells, config.num_bins),
        num_bins=config.num_bins,
        rho=config.rho,
        alpha=config.alpha,
        sampler=config.sampler,
        seed=config.seed,
    )
    table = pa.table({"sample_id": bins["sample_id"], "selected": pa.array(selection.selected.numpy())})
    write_parquet(table, storage.join(out, SELECTION))
    storage.write_json(storage.join(out, BIN_TABLE), selection.table())


def _tensor(column: pa.ChunkedArray) -> torch.Tensor:
    """A scalar column as a 1-d tensor, a vector column as a 2-d one."""
    if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
        return torch.from_numpy(to_matrix(column))
    return torch.from_numpy(np.array(column.to_numpy()))


def patches_stage(config: Config, out: str, layout: Layout | None = None) -> None:
    """Re-read the selected images at the patch size, GradCAM++ their patches, store the kept ones."""
    layout = layout or Layout(config)
    _write_dataset(patch_dataset(config, layout.load_inventory(layout.selected_ids())), out)


def patch_dataset(config: Config, chosen: Inventory) -> ray.data.Dataset:
    """Decode tasks (`read_sources`) -> CAM actors (`PatchSelector`) -> encode tasks (`encode_rows`).

    The actors only run the model and gather the kept pixels; decoding and PNG/JPEG encoding run as CPU
    tasks beside them, so per-row CPU work is off the model's critical path on a GPU.
    """
    listed = chosen.table.select(["sample_id", "label", "path"])
    cpu_task = {"batch_size": PATCH_TASK_BATCH, **decode_options(), "fn_kwargs": {"config": config}}
    ds = ray.data.from_arrow(listed, override_num_blocks=max(1, -(-listed.num_rows // (4 * PATCH_TASK_BATCH))))
    ds = ds.map_batches(read_sources, batch_format="numpy", **cpu_task).filter(expr="status == 'ok'")
    ds = ds.map_batches(
        PatchSelector,
        fn_constructor_kwargs={"config": config},
        batch_size=batch_size(config, "patches"),
        **actor_options(config),
    )
    return ds.map_batches(encode_rows, batch_format="numpy", **cpu_task)


def write_stage(run: Run) -> dict[str, object]:
    """Manifest (every input), summary and report into the output; `_SUCCESS` last."""
    config, layout = run.config, run.layout
    summary = manifest_and_summary(config, layout, run.stages)
    storage.write_bytes(layout.output(CONFIG), config.to_json().encode())
    summarize.report(config, layout=layout)
    storage.write_json(layout.output(storage.SUCCESS), {"fingerprint": layout.fingerprint("write")})
    return summary


def manifest_and_summary(config: Config, layout: Layout, stages: dict) -> dict[str, object]:
    """Stream the manifest (every input) from the committed stages and the dataset, then write the summary.

    Records the manifest's time as `stages["write"]`. The driver holds O(N) small columns, never the
    whole manifest (`write_manifest`); `benchmarks/scale.py` measures this function at ImageNet shapes.
    """
    start = time.perf_counter()
    inventory = layout.load_inventory()
    scores = read_embeddings(layout.embeddings, columns=["sample_id", "status", "reason", "note", "texture"])
    kept = read_parquet(layout.dataset, columns=["sample_id"])["sample_id"].to_numpy()
    bins = read_parquet(layout.bins, columns=["sample_id", "bin", "rank"])
    manifest = write_manifest(layout.manifest, inventory.table, scores, bins, layout.selected_ids(), kept)
    del inventory, scores, bins
    stages["write"] = {"reused": False, "seconds": round(time.perf_counter() - start, 3)}
    summary = redact_all(summarize.summary(config, manifest, storage.read_json(layout.bin_table), stages))
    storage.write_json(layout.summary, summary)
    return summary


def resample(config: Config, overwrite: bool = False) -> dict[str, object]:
    """A new rho / alpha / sampler on cached embeddings and bins: refuses to run any embedding model.

    Args:
        config: as the earlier run's, with a new rho / alpha / sampler and a new `output` whose `cache` is
            the earlier run's `cache_uri`; the patch stage re-runs for the new selection.
        overwrite: as in `compress`.

    Returns:
        The new run's summary.

    Example:
        >>> adq_ray.resample(config.replace(rho=0.05, output="outputs/r05", cache=config.cache_uri))  # doctest: +SKIP

    The cache is found when the input is unchanged (same listing digest); a changed input needs `adq compress`.
    """
    layout = Layout(config)
    for name in ("embed", "bins"):
        if not storage.is_committed(layout.stage(name)):
            raise FileNotFoundError(
                f"no cached {name} stage for this input (as listed now) and model config under "
                f"{redact(config.cache_uri)}: run `adq compress` first"
            )
    return compress(config, overwrite=overwrite)
