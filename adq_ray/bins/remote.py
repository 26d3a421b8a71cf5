"""Stage 2 on Ray: one task per group of classes reads only its classes' embeddings and bins them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray
import torch

from adq_ray.bins import assign_bins
from adq_ray.embed.store import read_embeddings
from adq_ray.tables import to_matrix


def bin_classes(
    embeddings_uri: str, labels: list[int], num_bins: int, max_group: int, features: str, seed: int
) -> pa.Table:
    """sample_id, label, bin, rank for every ok sample of `labels` (GPU when the task holds one)."""
    columns = ["sample_id", "label", "embedding"] + (["grad"] if features == "gradient" else [])
    table = read_embeddings(embeddings_uri, labels=labels, columns=columns, ok_only=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = assign_bins(
        torch.from_numpy(to_matrix(table["embedding"])),
        torch.from_numpy(np.array(table["label"].to_numpy())),
        num_bins,
        grads=torch.from_numpy(to_matrix(table["grad"])) if features == "gradient" else None,
        max_group=max_group,
        device=device,
        seed=seed,
    )
    return pa.table(
        {
            "sample_id": table["sample_id"],
            "label": table["label"],
            "bin": pa.array(result.bin.cpu().numpy().astype(np.int64)),
            "rank": pa.array(result.rank.cpu().numpy().astype(np.int64)),
        }
    )


def plan_tasks(class_sizes: dict[int, int], parallelism: int) -> list[list[int]]:
    """Classes dealt to at most `parallelism` tasks, largest first onto the lightest task (LPT)."""
    groups: list[list[int]] = [[] for _ in range(max(1, min(parallelism, len(class_sizes))))]
    load = [0] * len(groups)
    for label, size in sorted(class_sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        i = int(np.argmin(load))
        groups[i].append(label)
        load[i] += size
    return [sorted(g) for g in groups if g]


def run_bins(
    embeddings_uri: str, class_sizes: dict[int, int], num_bins: int, max_group: int, features: str, seed: int, gpus: int
) -> pa.Table:
    """Fan the classes out over Ray tasks, one per GPU when `gpus` > 0 (else one per CPU); sorted by sample_id."""
    options = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    task = ray.remote(bin_classes).options(**options)
    parallelism = gpus or int(ray.cluster_resources().get("CPU", 1))
    refs = [
        task.remote(embeddings_uri, labels, num_bins, max_group, features, seed)
        for labels in plan_tasks(class_sizes, parallelism)
    ]
    return pa.concat_tables(ray.get(refs)).sort_by("sample_id")
