"""Per-epoch checkpoints for the Ray Train loops, so a failed worker costs at most a few epochs.

Thin plumbing around `ray.train.report` / `ray.train.get_checkpoint` (Ray Train V2): the training state
is a plain dict (`loop.training_state`, `mae_train.mae_state`) saved with `torch.save` by the rank-0
worker. With `max_failures` > 0, Ray Train restarts the worker group after a failure (a worker process
killed, a node lost, an error) and the loops go on from the latest checkpoint; with 0 no checkpoint is
written. A run started again under the same name and storage_path (after its driver was lost) goes on
from its latest checkpoint too: Ray Train V2 restores the run's checkpoint record from its folder.
`adq evaluate --resume` and `adq train-mae --resume` name their runs so (`run_digest`); without it every
run gets a fresh name and starts from scratch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from adq_ray import __version__, storage
from adq_ray.config import ConfigError

STATE_FILE = "state.pt"
RESULT = "adq-result.json"  # a finished resumable run's result, in its Ray Train run folder


def check_retries(max_failures: int, checkpoint_every: int) -> None:
    """Raise ConfigError unless max_failures >= 0 and checkpoint_every >= 1."""
    failed = [
        f"{name} must be >= {low} (got {value})"
        for name, value, low in (("max_failures", max_failures, 0), ("checkpoint_every", checkpoint_every, 1))
        if value < low
    ]
    if failed:
        raise ConfigError("; ".join(failed))


def runs_folder(uri: str) -> str:
    """Where Ray Train keeps runs under `uri`: an s3:// URL as it is, a local folder as an absolute path."""
    return uri if storage.is_remote(uri) else storage.resolve(uri)[1]


def trainer(
    loop: Callable[[dict[str, Any]], Any],
    loop_config: dict[str, Any],
    *,
    name: str,
    storage_path: str | None,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: float,
    max_failures: int,
    checkpoint_every: int,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    **kwargs: Any,
) -> ray.train.torch.TorchTrainer:
    """A TorchTrainer of `num_workers` workers whose `loop` checkpoints every `checkpoint_every` epochs.

    `loop` gets `loop_config` plus the retry settings, `on_epoch` and `threads` (the worker's CPUs);
    Ray Train restarts it `max_failures` times, keeping only the latest checkpoint. `kwargs` (datasets,
    dataset_config) go to the TorchTrainer.
    """
    check_retries(max_failures, checkpoint_every)
    return ray.train.torch.TorchTrainer(
        loop,
        train_loop_config={
            **loop_config,
            "threads": max(1, int(cpus_per_worker)),
            "max_failures": max_failures,
            "checkpoint_every": checkpoint_every,
            "on_epoch": on_epoch,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
        **kwargs,
    )


def due(epoch: int, epochs: int, every: int, max_failures: int) -> bool:
    """Whether the state after `epoch` (1-based) is saved: every `every` epochs, never the last or without retries."""
    return max_failures > 0 and epoch % every == 0 and epoch < epochs


def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """`ray.train.report` on every worker (a barrier); rank 0 attaches `state` as the checkpoint."""
    if state is None or ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="adq-state-") as folder:
        torch.save(state, Path(folder) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def latest_state(device: torch.device) -> dict[str, Any] | None:
    """The state of this run's latest checkpoint (after a restart), on `device`; None on a first attempt."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=True)


def run_digest(*values: Any) -> str:
    """16 hex digits naming a resumable run: sha256 of `values` (dataclasses as dicts) and the adq-ray version.

    Equal only for the same data, recipe and workers, so a rerun finds its own run folder and never
    resumes another run's state; an upgrade of adq-ray starts afresh.
    """
    plain = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in values]  # type: ignore[arg-type]
    return hashlib.sha256(json.dumps([*plain, __version__], sort_keys=True).encode()).hexdigest()[:16]


def finished(storage_path: str, name: str) -> Any | None:
    """The result `save_result` kept for the run `name` under `storage_path`, or None if it has not finished."""
    uri = storage.join(storage_path, name, RESULT)
    return storage.read_json(uri) if storage.exists(uri) else None


def save_result(storage_path: str, name: str, result: Any) -> None:
    """Keep a finished run's (JSON) result in its run folder, for `finished`."""
    storage.write_json(storage.join(storage_path, name, RESULT), result)
