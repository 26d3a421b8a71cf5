"""Stage 2 on Ray: one task per group of classes reads its classes' embeddings a chunk at a time and bins them.

A task returns, besides each sample's bin and rank, the per (bin, class) cell sums that select needs
(count, texture sum, view-sum sum), so no per-sample vector ever reaches the driver; and it holds one
chunk of classes at a time, so its memory does not grow with the number of classes dealt to it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from adq_ray import resources, storage
from adq_ray.bins import assign_bins
from adq_ray.embed.store import open_embeddings, read_embeddings
from adq_ray.quotas.scores import BinSums, bin_sums, cell_sums
from adq_ray.tables import fixed_size_list, to_matrix

# Vector bytes (embedding + view sum [+ grad], float32) read per chunk of classes, and the similarity block of
# assign_bins: a CPU task's peak is a few times each (transient copies) over the process's ~0.5 GB of Python,
# torch and Ray; a GPU task batches more classes per kernel launch (its block: assign_bins' own default).
CHUNK_BYTES = {"cpu": 32 * 2**20, "cuda": 1024 * 2**20}
CPU_BLOCK_BYTES = 64 * 2**20


def bin_classes(
    embeddings_uri: str,
    labels: list[int],
    class_sizes: dict[int, int],
    num_bins: int,
    max_group: int,
    features: str,
    seed: int,
    chunk_bytes: int | None = None,
    dtype: str = "float32",
) -> tuple[pa.Table, pa.Table]:
    """(samples, cells) of the classes `labels`, binned a chunk of classes at a time.

    class_sizes: label -> ok samples of every class of the dataset (DQ's bin sizes depend on them all).

    samples: sample_id, label, bin, rank per ok sample; cells: bin, label, count, texture (sum), view_sum
    (sum, float64 d-vector) per non-empty (bin, class) cell. Binning is per class, so the chunking changes
    nothing in the output (GPU when the task holds one).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = open_embeddings(embeddings_uri)
    row_bytes = 4 * sum(
        _width(dataset.schema, c) for c in ("embedding", "view_sum", "grad") if c in dataset.schema.names
    )
    rows = max(1, (chunk_bytes or CHUNK_BYTES[device.type]) // max(row_bytes, 1))
    columns = ["sample_id", "label", "texture", "embedding", "view_sum"] + (["grad"] if features == "gradient" else [])
    samples, cells = [], []
    for chunk in chunk_classes({c: class_sizes[c] for c in labels}, rows):
        table = read_embeddings(embeddings_uri, labels=chunk, columns=columns, ok_only=True, dataset=dataset)
        part, cell = _bin_chunk(table, class_sizes, num_bins, max_group, features, seed, device, dtype)
        samples.append(part)
        cells.append(cell)
        del table  # before the next chunk is read; Arrow's allocator gives the pages back
        pa.default_memory_pool().release_unused()
    return pa.concat_tables(samples), pa.concat_tables(cells)


def _bin_chunk(
    table: pa.Table,
    class_sizes: dict[int, int],
    num_bins: int,
    max_group: int,
    features: str,
    seed: int,
    device: torch.device,
    dtype: str = "float32",
) -> tuple[pa.Table, pa.Table]:
    labels = torch.from_numpy(np.array(table["label"].to_numpy()))
    result = assign_bins(
        torch.from_numpy(to_matrix(table["embedding"])),
        labels,
        num_bins,
        grads=torch.from_numpy(to_matrix(table["grad"])) if features == "gradient" else None,
        max_group=max_group,
        class_sizes=class_sizes,
        device=device,
        dtype=dtype,
        seed=seed,
        block_bytes=CPU_BLOCK_BYTES if device.type == "cpu" else None,
    )
    bins = result.bin.cpu()
    texture = torch.from_numpy(np.array(table["texture"].to_numpy()))
    cell_bin, cell_label, sums = cell_sums(
        bins, labels, texture, torch.from_numpy(to_matrix(table["view_sum"])), num_bins
    )
    samples = pa.table(
        {
            "sample_id": table["sample_id"],
            "label": table["label"],
            "bin": pa.array(bins.numpy().astype(np.int64)),
            "rank": pa.array(result.rank.cpu().numpy().astype(np.int64)),
        }
    )
    cells = pa.table(
        {
            "bin": pa.array(cell_bin.numpy()),
            "label": pa.array(cell_label.numpy()),
            "count": pa.array(sums.count.numpy()),
            "texture": pa.array(sums.texture.numpy()),
            "view_sum": fixed_size_list(sums.view.numpy()),
        }
    )
    return samples, cells


def _width(schema: pa.Schema, name: str) -> int:
    """Values per row of a vector column (fixed-size lists; 512 assumed for variable-length ones)."""
    kind = schema.field(name).type
    return kind.list_size if pa.types.is_fixed_size_list(kind) else 512


def chunk_classes(class_sizes: dict[int, int], rows: int) -> list[list[int]]:
    """Classes in label order, packed into consecutive chunks of at most `rows` samples (a larger class alone)."""
    chunks: list[list[int]] = []
    total = rows + 1
    for label in sorted(class_sizes):
        size = class_sizes[label]
        if chunks and total + size <= rows:
            chunks[-1].append(label)
            total += size
        else:
            chunks.append([label])
            total = size
    return chunks


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
    embeddings_uri: str,
    class_sizes: dict[int, int],
    num_bins: int,
    max_group: int,
    features: str,
    seed: int,
    gpus: int,
    *,
    dtype: str = "float32",
) -> tuple[pa.Table, pa.Table]:
    """Fan the classes out over Ray tasks, one per GPU when `gpus` > 0 (else one per CPU).

    Returns (samples sorted by sample_id, cells) as `bin_classes` describes them.
    """
    options, parallelism = resources.bin_tasks(gpus)
    task = ray.remote(bin_classes).options(num_returns=2, **options)
    refs = [
        task.remote(embeddings_uri, labels, class_sizes, num_bins, max_group, features, seed, dtype=dtype)
        for labels in plan_tasks(class_sizes, parallelism)
    ]
    samples = pa.concat_tables(ray.get([r[0] for r in refs])).sort_by("sample_id")
    cells = pa.concat_tables(ray.get([r[1] for r in refs]))
    return samples, cells


def read_bin_sums(cells_uri: str, num_bins: int, batch_rows: int = 4096) -> BinSums:
    """Per-bin sums from the stored cells, read `batch_rows` cells at a time (memory O(num_bins x d), not cells x d)."""
    fs, path = storage.resolve(cells_uri)
    total = None
    with fs.open_input_file(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
            part = bin_sums(
                torch.from_numpy(np.array(batch.column("bin").to_numpy())),
                torch.from_numpy(np.array(batch.column("texture").to_numpy())),
                torch.from_numpy(to_matrix(batch.column("view_sum"), np.float64)),
                num_bins,
                counts=torch.from_numpy(np.array(batch.column("count").to_numpy())),
            )
            total = part if total is None else total + part
    if total is None:
        raise ValueError(f"{cells_uri} holds no cell: delete the bins cache and re-run")
    return total
