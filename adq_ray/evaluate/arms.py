"""`adq evaluate`: full data vs random vs DQ vs ADQ at the same sample and patch keep ratios.

Every compressed arm is a pipeline run into `<output>/<arm>` sharing one stage cache, so the images are
embedded and binned once; the arms differ only in their sampler. Training reads the compressed arms
back through `read_reconstructed` (MAE, or mean fill without MAE weights) and the full arm decoded
from the sources.
"""

from __future__ import annotations

import argparse
from typing import Any

import ray

from adq_ray import resources, storage
from adq_ray.config import Config
from adq_ray.evaluate.compare import evaluate_arms, write_table
from adq_ray.evaluate.train import Recipe
from adq_ray.ingest import Inventory, list_inputs, read_images
from adq_ray.layout import Layout
from adq_ray.patches.reconstruct import read_reconstructed
from adq_ray.pipeline import compress
from adq_ray.write.summary import report

SAMPLERS = ("random", "dq", "adq")


def decoded(config: Config, inventory: Inventory) -> ray.data.Dataset:
    """The readable inputs as (image, label) rows at the model size."""
    ds = read_images(config, inventory)
    return ds.filter(expr="status == 'ok'").select_columns(["image", "label"])


def arm(config: Config, sampler: str) -> Config:
    """The config of one compressed arm: `<output>/<sampler>`, sharing the stage cache of `config`."""
    return config.replace(sampler=sampler, output=storage.join(config.output, sampler), cache=config.cache_uri)


def evaluate_command(config: Config, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Compress with each sampler, train one classifier per arm (plus full data), write table, plot, report."""
    summaries = {sampler: compress(arm(config, sampler)) for sampler in SAMPLERS}
    mae, _, weights = args.mae.partition(":")
    inventory = Layout(config).load_inventory()  # listed once, by the arms' shared embed stage
    arms = {"full": decoded(config, inventory)}
    meta: dict[str, dict[str, Any]] = {"full": {"sample_ratio": None, "storage_ratio": 1.0, "method": "full"}}
    for sampler, summary in summaries.items():
        arms[sampler] = read_reconstructed(
            Layout(arm(config, sampler)).dataset,
            mae=mae or None,
            mae_weights=weights or "hub",
            device=config.device,
            num_gpus=resources.restore_gpus(config, bool(mae)),
        )
        meta[sampler] = {
            "method": sampler,
            **{k: summary[k] for k in ("sample_ratio", "data_keep_ratio", "storage_ratio")},
        }
    test_config = config.replace(input=args.test)
    test = decoded(test_config, list_inputs(test_config))
    recipe = Recipe(
        model=args.model, epochs=args.epochs, batch_size=args.train_batch_size, num_classes=len(inventory.classes)
    )
    runs = storage.join(config.output, "train")  # Ray Train wants an absolute local path or a URL
    rows = evaluate_arms(
        arms, test, recipe, metadata=meta, num_workers=max(1, args.workers), **resources.train_workers(config),
        storage_path=runs if storage.is_remote(runs) else storage.resolve(runs)[1],
    )  # fmt: skip
    write_table(rows, storage.join(config.output, "evaluation"))
    report(arm(config, "adq"), eval_rows=rows)
    return rows
