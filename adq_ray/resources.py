"""How many GPUs a stage asks Ray for, and the actor-pool options that follow from it."""

from __future__ import annotations

import ray

from adq_ray.config import Config


def gpus(config: Config) -> int:
    """GPUs to plan for: none with device="cpu"; at least one with device="cuda", even before an
    autoscaling cluster has started any (Ray adds GPU nodes on demand); else those the cluster has."""
    if config.device == "cpu":
        return 0
    visible = int(ray.cluster_resources().get("GPU", 0))
    return max(visible, 1) if config.device == "cuda" else visible


def actor_options(config: Config) -> dict[str, object]:
    """`map_batches` options: one GPU per actor and one actor per GPU, else one actor per CPU.

    A CPU actor holds `cpus_per_actor` (0.5) of a CPU and runs one torch thread, so the models use every
    core while half the CPU resources stay free for the read and decode tasks; fractional CPUs also keep
    the pool schedulable on a 2-core machine (RAY-NOTES: Ray issue 44687). On 2 cores this brings the
    embed stage to 1.35x the bare forwards (benchmarks/RESULTS.md), against 3.0x with one actor.
    """
    n = gpus(config)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    size = config.num_actors or (n if n else max(1, cpus))
    resources = {"num_gpus": 1} if n else {"num_cpus": config.cpus_per_actor}
    return {"compute": ray.data.ActorPoolStrategy(size=size), **resources}
