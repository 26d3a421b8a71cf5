"""Where every stage's output lives, and the fingerprints that make stage outputs re-usable.

Cached stages live under `config.cache_uri` in directories named `<stage>-<fingerprint>`: the hash of
the config fields the stage and every stage before it depend on. A new rho therefore finds the
embeddings and bins of an earlier run; a new backbone does not. The run's products (dataset,
manifest, summary, report) live under `config.output`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from adq_ray import __version__, storage
from adq_ray.config import Config, field_stage, field_types
from adq_ray.ingest import Inventory, walk_input
from adq_ray.tables import read_parquet, write_parquet

STAGES = ("embed", "bins", "select", "patches", "write")
# File names inside the stage and output directories, shared by the stages that write them and `Layout`.
EMBEDDINGS, INVENTORY, CLASSES = "embeddings", "inventory.parquet", "classes.json"
BINS, CELLS = "bins.parquet", "cells.parquet"
SELECTION, BIN_TABLE = "selection.parquet", "bins.json"
DATASET, MANIFEST, SUMMARY, CONFIG = "dataset", "manifest.parquet", "summary.json", "config.json"
# Config fields each stage's output depends on (its own; a stage also depends on every earlier stage),
# declared with the fields themselves (`config.option(default, stage, help)`).
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    stage: tuple(name for name in field_types() if field_stage(name) == stage) for stage in STAGES
}


def fingerprint(config: Config, stage: str, listing: str = "") -> str:
    """Hash of the config fields that `stage` and every stage before it depend on, of the input's
    listing digest (`sources.Listing.digest`: what was read, from embed on) and of the version of
    adq-ray (an upgrade never re-uses a cache written by other code)."""
    upto = STAGES[: STAGES.index(stage) + 1]
    values = {name: getattr(config, name) for s in upto for name in STAGE_FIELDS[s]}
    values["adq_ray"] = __version__
    if listing:
        values["listing"] = listing
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Layout:
    """The paths of one config's stage outputs, and readers for the small ones.

    Stage directories are keyed by the input's listing digest too: pass the one a run listed, or
    leave it out to list the input now (readers after a run, `adq sample`).
    """

    config: Config
    listing: str | None = None

    @cached_property
    def digest(self) -> str:
        return self.listing if self.listing is not None else walk_input(self.config).digest

    def fingerprint(self, name: str) -> str:
        return fingerprint(self.config, name, self.digest)

    def stage(self, name: str) -> str:
        return storage.join(self.config.cache_uri, f"{name}-{self.fingerprint(name)}")

    def output(self, name: str) -> str:
        return storage.join(self.config.output, name)

    @property
    def embeddings(self) -> str:
        return storage.join(self.stage("embed"), EMBEDDINGS)

    @property
    def inventory(self) -> str:
        return storage.join(self.stage("embed"), INVENTORY)

    @property
    def classes(self) -> str:
        return storage.join(self.stage("embed"), CLASSES)

    @property
    def bins(self) -> str:
        return storage.join(self.stage("bins"), BINS)

    @property
    def cells(self) -> str:
        return storage.join(self.stage("bins"), CELLS)

    @property
    def selection(self) -> str:
        return storage.join(self.stage("select"), SELECTION)

    @property
    def bin_table(self) -> str:
        return storage.join(self.stage("select"), BIN_TABLE)

    @property
    def dataset(self) -> str:
        return self.output(DATASET)

    @property
    def manifest(self) -> str:
        return self.output(MANIFEST)

    @property
    def summary(self) -> str:
        return self.output(SUMMARY)

    def save_inventory(self, inventory: Inventory, directory: str) -> None:
        """Store the listing in a (staging) embed directory, where `load_inventory` finds it once committed."""
        write_parquet(inventory.table, storage.join(directory, INVENTORY))
        storage.write_json(storage.join(directory, CLASSES), inventory.classes)

    def load_inventory(self, sample_ids: np.ndarray | None = None) -> Inventory:
        """The cached listing of the inputs, or the part of it with the given sample ids."""
        inventory = Inventory.read(self.inventory, self.classes)
        return inventory if sample_ids is None else inventory.subset(sample_ids)

    def selected_ids(self) -> np.ndarray:
        table = read_parquet(self.selection)
        return table.filter(table["selected"])["sample_id"].to_numpy()
