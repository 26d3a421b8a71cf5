"""Every Ray resource request of every stage, decided here; the call sites only spread these options.

- decode tasks (ingest): `DECODE_CPUS` each, so a small machine runs several at once;
- model actor pools (embed, patches, the restore reader): one GPU per actor and one actor per GPU, else
  `cpus_per_actor` per actor and one actor per CPU;
- bin tasks: one GPU each and one per GPU, else one CPU each and one per CPU;
- Ray Train workers (`adq evaluate`): one GPU each, else `cpus_per_actor`.
"""

from __future__ import annotations

import ray

from adq_ray.config import Config

DECODE_CPUS = 0.5  # fractional, so small machines run several decode tasks at once


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
