"""Every Ray resource request of every stage, decided here; the call sites only spread these options.

- decode tasks (ingest): `DECODE_CPUS` each, so a small machine runs several at once;
- model actor pools (embed, patches, the restore reader): one GPU per actor and one actor per GPU, else
  `cpus_per_actor` per actor and one actor per CPU;
- bin tasks: one GPU each and one per GPU, else one CPU each and one per CPU;
- Ray Train workers (`adq evaluate`): one GPU each, else `cpus_per_actor`;
- and the job's environment (`init_ray`): the driver's S3 endpoint and region, in every worker.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ray

from adq_ray import storage
from adq_ray.config import Config

JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # a submitted job's config, runtime_env included (Ray sets it)
DECODE_CPUS = 0.5  # fractional, so small machines run several decode tasks at once


def job_config() -> dict[str, Any]:
    """The config Ray's job supervisor hands a submitted job's driver ({"runtime_env", "metadata"}), else {}."""
    return json.loads(os.environ.get(JOB_CONFIG_VARIABLE) or "{}")


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """`ray.init(address, **kwargs)` with the driver's S3 endpoint and region in every worker's environment.

    Workers on other nodes start from their node's environment: without this, an `AWS_ENDPOINT_URL` (MinIO,
    Ceph) set only where the driver runs would send the workers' own reads to AWS. Variables that the
    submitted job's runtime_env already sets are left to it (Ray refuses a key given twice).
    """
    job = job_config().get("runtime_env") or {}
    runtime_env = dict(kwargs.pop("runtime_env", None) or {})
    env = {**storage.worker_env(job.get("env_vars")), **runtime_env.get("env_vars", {})}
    if env:
        runtime_env["env_vars"] = env
    ray.init(address=address, runtime_env=runtime_env or None, **kwargs)


def gpus(config: Config) -> int:
    """GPUs to plan for: none with device="cpu"; at least one with device="cuda", even before an
    autoscaling cluster has started any (Ray adds GPU nodes on demand); else those the cluster has."""
    if config.device == "cpu":
        return 0
    visible = int(ray.cluster_resources().get("GPU", 0))
    return max(visible, 1) if config.device == "cuda" else visible


def cpus() -> int:
    """The cluster's CPUs (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def pool(size: int, *, num_gpus: float = 0.0, num_cpus: float = 0.5) -> dict[str, object]:
    """`map_batches` options of an actor pool that starts `size` actors, each with `num_gpus` or else `num_cpus`.

    min_size is 1: Ray Data warns ("minimum number of concurrent actors") whenever a pool's minimum exceeds
    the inputs it receives, which a small selection does; initial_size still starts every actor at once.
    """
    size = max(1, size)
    compute = ray.data.ActorPoolStrategy(min_size=1, max_size=size, initial_size=size)
    return {"compute": compute, **({"num_gpus": num_gpus} if num_gpus else {"num_cpus": num_cpus})}


def actor_options(config: Config) -> dict[str, object]:
    """`map_batches` options of a model actor pool (embed, patches): one actor per GPU, else one per CPU.

    A CPU actor holds `cpus_per_actor` (0.5) of a CPU and runs one torch thread, so the models use every
    core while half the CPU resources stay free for the read and decode tasks; fractional CPUs also keep
    the pool schedulable on a 2-core machine (RAY-NOTES: Ray issue 44687). On 2 cores this brings the
    embed stage to 1.35x the bare forwards (benchmarks/RESULTS.md), against 3.0x with one actor.
    """
    n = gpus(config)
    size = config.num_actors or (n if n else cpus())
    return pool(size, num_gpus=1 if n else 0, num_cpus=config.cpus_per_actor)


def decode_options() -> dict[str, float]:
    """Ray options of one decode task (ingest)."""
    return {"num_cpus": DECODE_CPUS}


def bin_tasks(num_gpus: int) -> tuple[dict[str, float], int]:
    """(Ray options of one bin task, how many tasks to plan): one per GPU when `num_gpus` > 0, else one per CPU."""
    return ({"num_gpus": 1}, num_gpus) if num_gpus else ({"num_cpus": 1}, cpus())


def restore_gpus(config: Config, mae: bool) -> float:
    """GPUs per restore actor (`read_reconstructed`): one when an MAE runs and the cluster has GPUs."""
    return float(bool(mae and gpus(config)))


def train_workers(config: Config) -> dict[str, object]:
    """Ray Train worker resources (`evaluate_arms` keywords): one GPU each, else `cpus_per_actor`."""
    on_gpu = gpus(config) > 0
    return {"use_gpu": on_gpu, "cpus_per_worker": 1.0 if on_gpu else config.cpus_per_actor}


# GPU memory per image of one actor call, at 224 px (scaled by (size / 224)^2), with margin: the embed actor's
# image + two views through the backbone (bf16 inference), and the CAM actor's forward + layer-4 backward.
# Calibrated by benchmarks/gpu_stages.py (it prints the measured peak per image).
GPU_BYTES_PER_IMAGE = {"embed": 16 * 2**20, "patches": 32 * 2**20}
GPU_MEMORY_SHARE = 0.25  # of the device's memory, for one batch's activations (models, decoders, fragmentation)
CPU_BATCH, MIN_GPU_BATCH, MAX_GPU_BATCH = 64, 64, 1024


def batch_size(config: Config, stage: str) -> int:
    """Rows per actor call of `stage` ("embed" or "patches"): `config.batch_size` when set (> 0), else automatic.

    Automatic: 64 on CPU; on GPU the largest power of two <= GPU_MEMORY_SHARE x device memory /
    (GPU_BYTES_PER_IMAGE[stage] x (size / 224)^2), within [64, 1024] (an 80 GB H100: 1024 for embed, 512 for
    patches at 224 px). The device memory is read on the driver when it sees a GPU, else by a one-GPU probe task.
    """
    import torch

    if config.batch_size > 0:
        return config.batch_size
    if config.device == "cpu" or not (torch.cuda.is_available() or gpus(config)):
        return CPU_BATCH
    size = config.image_size if stage == "embed" else (config.cam_image_size or config.patch_image_size)
    per_image = GPU_BYTES_PER_IMAGE[stage] * (size / 224) ** 2
    fit = int(GPU_MEMORY_SHARE * gpu_memory() / per_image)
    return max(MIN_GPU_BATCH, min(MAX_GPU_BATCH, 1 << max(fit, 1).bit_length() - 1))


def gpu_memory() -> int:
    """Total memory in bytes of one GPU of the cluster (the driver's own when it has one)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory

    @ray.remote(num_gpus=1)
    def probe() -> int:
        import torch

        return torch.cuda.get_device_properties(0).total_memory

    return ray.get(probe.remote())
