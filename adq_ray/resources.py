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
    """`map_batches` options: one GPU per actor and one actor per GPU, else fractional-CPU actors.

    Fractional CPUs keep a pool schedulable on a 2-core machine (RAY-NOTES: Ray issue 44687).
    """
    n = gpus(config)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    size = config.num_actors or (n if n else max(1, cpus // 4))
    resources = {"num_gpus": 1} if n else {"num_cpus": config.cpus_per_actor}
    return {"compute": ray.data.ActorPoolStrategy(size=size), **resources}
