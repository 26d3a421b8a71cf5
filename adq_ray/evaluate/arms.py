"""`adq evaluate`: full data vs random vs DQ vs ADQ at the same number of kept images and patch keep ratio.

Every compressed arm is a pipeline run into `<output>/<arm>` sharing one stage cache, so the images are
embedded and binned once; the arms differ only in their sampler (`ARMS`). Training reads the compressed arms
back through `read_reconstructed` (MAE, or mean fill without MAE weights) and the full arm decoded
from the sources.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from adq_ray import resources, storage
from adq_ray.config import Config
from adq_ray.errors import InputError
from adq_ray.evaluate import resume as checkpoints
from adq_ray.evaluate.compare import evaluate_arms, write_table
from adq_ray.evaluate.train import Recipe
from adq_ray.ingest import Inventory, list_inputs, read_images, walk_input
from adq_ray.layout import Layout
from adq_ray.patches.reconstruct import read_reconstructed
from adq_ray.pipeline import compress
from adq_ray.write.summary import report

log = logging.getLogger("adq_ray")

# Arm name -> (sampler, alpha; None = the config's). "random", "dq" and "adq" keep the same number of
# images B = floor(rho |D| + 0.5): the DQ arm is DQ's bins with proportional quotas from one exact global
# budget (ADQ at alpha 0). "dq-cell" is DQ's literal per-(bin, class) rounding, whose count drifts from
# B when cells are small: it is trained and reported apart, with its achieved sample ratio.
ARMS: dict[str, tuple[str, float | None]] = {
    "random": ("random", None),
    "dq": ("adq", 0.0),
    "adq": ("adq", None),
    "dq-cell": ("dq", None),
}
EQUAL_BUDGET = ("random", "dq", "adq")


def decoded(config: Config, inventory: Inventory) -> ray.data.Dataset:
    """The readable inputs as (image, label) rows at the model size."""
    ds = read_images(config, inventory)
    return ds.filter(expr="status == 'ok'").select_columns(["image", "label"])


def arm(config: Config, name: str) -> Config:
    """The config of one compressed arm (`ARMS`): `<output>/<name>`, sharing the stage cache of `config`."""
    sampler, alpha = ARMS[name]
    changes: dict[str, Any] = {"sampler": sampler, "output": storage.join(config.output, name)}
    if alpha is not None:
        changes["alpha"] = alpha
    return config.replace(cache=config.cache_uri, **changes)


def evaluate(
    config: Config,
    test: str,
    recipe: Recipe = Recipe(),
    *,
    mae: str = "",
    workers: int = 1,
    seeds: int = 1,
    dq_cell: bool = True,
    max_failures: int = 2,
    checkpoint_every: int = 5,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Compress with each arm's sampler, train `seeds` classifiers per arm (plus full data), write table, plot, report.

    test: ImageFolder of the test split; mae: "arch:weights" for MAE reconstruction ("" = mean fill);
    recipe.num_classes is set from the input. The random, DQ and ADQ arms are checked to train on the
    same number of images. One row per (arm, seed), with `seed`, `method` and the arm's ratios.
    A failed training run restarts up to `max_failures` times from its latest checkpoint
    (every `checkpoint_every` epochs). With `resume`, a rerun reads back the (arm, seed) runs that finished
    under `<output>/train` and continues the unfinished ones from their latest checkpoint, as long as the
    arm's data, the test set, the MAE, the recipe and the workers are unchanged (`data_keys`, `run_name`).
    """
    names = [*EQUAL_BUDGET, *(["dq-cell"] if dq_cell else [])]
    summaries = {}
    for name in names:
        try:
            summaries[name] = compress(arm(config, name))
        except InputError as err:  # DQ's per-cell rounding can keep nothing where the global budget keeps B
            if name != "dq-cell":
                raise
            log.warning("adq evaluate: the dq-cell arm is left out: %s", err)
    mae_arch, _, weights = mae.partition(":")
    layout = Layout(config)
    inventory = layout.load_inventory()  # listed once, by the arms' shared embed stage
    arms = {"full": decoded(config, inventory)}
    meta: dict[str, dict[str, Any]] = {"full": {"sample_ratio": None, "storage_ratio": 1.0, "method": "full"}}
    for name, summary in summaries.items():
        arms[name] = read_reconstructed(
            Layout(arm(config, name)).dataset,
            mae=mae_arch or None,
            mae_weights=weights or "hub",
            device=config.device,
            num_gpus=resources.restore_gpus(config, bool(mae_arch)),
        )
        meta[name] = {
            "method": name,
            **{k: summary[k] for k in ("sample_ratio", "data_keep_ratio", "storage_ratio") if k in summary},
        }
    test_config = config.replace(input=test)
    test_listing = walk_input(test_config)
    test_ds = decoded(test_config, list_inputs(test_config, test_listing))
    keys = data_keys(config, layout, list(arms), test_listing.digest, mae) if resume else None
    recipe = recipe.replace(num_classes=len(inventory.classes))
    runs = checkpoints.runs_folder(storage.join(config.output, "train"))
    rows = []
    for seed in range(seeds):
        rows += evaluate_arms(
            arms, test_ds, recipe.replace(seed=seed), metadata={k: {**v, "seed": seed} for k, v in meta.items()},
            num_workers=max(1, workers), storage_path=runs,
            max_failures=max_failures, checkpoint_every=checkpoint_every, keys=keys, **resources.train_workers(config),
        )  # fmt: skip
    check_equal_budgets(rows)
    write_table(rows, storage.join(config.output, "evaluation"))
    report(arm(config, "adq"), eval_rows=rows)
    return rows


def data_keys(config: Config, layout: Layout, names: list[str], test_digest: str, mae: str) -> dict[str, str]:
    """Per arm, a digest of what its training data and the test set depend on (`evaluate_arms` keys).

    A compressed arm: the fingerprint its `compress` committed with the output (every config field and
    the input listing); the full arm: the embed stage's (decoding, and the input listing; conservative:
    a new backbone retrains it too). Both with the test listing's digest and the MAE.
    """
    keys = {"full": layout.fingerprint("embed")}
    for name in names:
        if name != "full":
            keys[name] = storage.read_json(storage.join(arm(config, name).output, storage.SUCCESS))["fingerprint"]
    return {name: checkpoints.run_digest(key, test_digest, mae) for name, key in keys.items()}


def check_equal_budgets(rows: list[dict[str, Any]]) -> None:
    """The random, DQ and ADQ arms must have trained on the same number of images (spec section 4's budget)."""
    counts = {row["arm"]: row["n_train"] for row in rows if row["arm"] in EQUAL_BUDGET}
    if len(set(counts.values())) > 1:
        raise RuntimeError(f"the arms trained on different numbers of images {counts}: the comparison is not fair")
