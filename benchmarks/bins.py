"""Bin generation: agreement with the slow reference, and speed at ImageNet-1K shape (CPU, CUDA).

    .venv/bin/python benchmarks/bins.py            # a few minutes on 2 cores
    .venv/bin/python benchmarks/bins.py --cpu-classes 1000   # the full CPU run, no extrapolation
    .venv/bin/python benchmarks/bins.py --dtype-sizes 100 1000 2000 5000 --only-dtype  # bins_dtype's effect

Prints a Markdown table. Features are random unit vectors: the cost does not depend on their values.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reference  # noqa: E402

from adq_ray.bins import assign_bins, bin_sizes  # noqa: E402

IMAGENET_CLASSES, IMAGENET_PER_CLASS, IMAGENET_DIM = 1000, 1300, 512


def _features(
    classes: int, per_class: int, dim: int, seed: int, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(classes * per_class, dim, generator=g, device=device)
    labels = torch.arange(classes, device=device).repeat_interleave(per_class)
    return torch.nn.functional.normalize(x, dim=1), labels


def _timed(fn, device: str = "cpu"):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def reference_rows(sizes: list[int], classes: int, dim: int) -> list[str]:
    rows = []
    for n in sizes:
        x, labels = _features(classes, n, dim, seed=n)
        x = x.double()
        (ref_bins, _), ref_s = _timed(lambda: reference.assign_bins(x.numpy(), labels.numpy(), 10))
        ours64, s64 = _timed(lambda: assign_bins(x, labels, 10, dtype=torch.float64))
        ours32, s32 = _timed(lambda: assign_bins(x, labels, 10, dtype=torch.float32))
        same64 = float(np.mean(ours64.bin.numpy() == ref_bins))
        same32 = float(np.mean(ours32.bin.numpy() == ref_bins))
        rows.append(
            f"| reference vs ours, {classes} x {n}, {dim}-d | cpu | {ref_s:.2f} s ref / {s64:.3f} s ours fp64 "
            f"({ref_s / s64:.0f}x) / {s32:.3f} s fp32 | same bin: fp64 {same64:.3f}, fp32 {same32:.3f} |"
        )
    return rows


def graphcut_objective(x: torch.Tensor, bins: torch.Tensor, num_bins: int) -> float:
    """Sum over bins k of f(S_k) = sum_{i in U_k, j in S_k} s(i, j) - sum_{i, j in S_k} s(i, j), in float64."""
    unit = torch.nn.functional.normalize(x.double(), dim=1)
    sim = 0.5 + 0.5 * (unit @ unit.T)
    total = 0.0
    for k in range(num_bins):
        pool, chosen = bins >= k, bins == k
        total += float(sim[pool][:, chosen].sum() - sim[chosen][:, chosen].sum())
    return total


def dtype_rows(sizes: list[int], dim: int = 128, classes: int = 3) -> list[str]:
    """bins_dtype: float32 against float64 bins on Gaussian classes (same bin, objective, time)."""
    rows = []
    for n in sizes:
        x, labels = _features(classes, n, dim, seed=n)
        b64, s64 = _timed(lambda: assign_bins(x.double(), labels, 10, dtype="float64"))
        b32, s32 = _timed(lambda: assign_bins(x, labels, 10, dtype="float32"))
        same = [float((b32.bin[labels == c] == b64.bin[labels == c]).double().mean()) for c in range(classes)]
        gaps = []
        for c in range(classes):
            f64 = graphcut_objective(x[labels == c], b64.bin[labels == c], 10)
            f32 = graphcut_objective(x[labels == c], b32.bin[labels == c], 10)
            gaps.append((f32 - f64) / abs(f64))
        rows.append(
            f"| float32 vs float64, {classes} x {n}, {dim}-d Gaussian | cpu | {s32:.2f} s fp32 / {s64:.2f} s fp64 "
            f"({s64 / s32:.1f}x) | same bin per class: {min(same):.3f}-{max(same):.3f}; objective (f32 - f64) / f64: "
            f"{min(gaps):+.1e} to {max(gaps):+.1e} |"
        )
    return rows


def imagenet_row(classes: int, device: str) -> str:
    x, labels = _features(classes, IMAGENET_PER_CLASS, IMAGENET_DIM, seed=0, device=device)
    bins, seconds = _timed(lambda: assign_bins(x, labels, 10, device=device), device)
    expected = bin_sizes(torch.tensor([IMAGENET_PER_CLASS]), 10)[0] * classes
    assert torch.equal(torch.bincount(bins.bin.cpu(), minlength=10), expected), "bins do not follow m_k"
    full = seconds * IMAGENET_CLASSES / classes
    how = (
        "measured"
        if classes == IMAGENET_CLASSES
        else f"{classes} classes measured, x{IMAGENET_CLASSES / classes:g} linear"
    )
    return (
        f"| ImageNet-1K shape, {IMAGENET_CLASSES} x {IMAGENET_PER_CLASS}, {IMAGENET_DIM}-d, fp32 | {device} | "
        f"{full:.1f} s ({how}: {seconds:.1f} s) | {IMAGENET_CLASSES * IMAGENET_PER_CLASS / full:,.0f} samples/s |"
    )


def split_row(n: int, max_group: int) -> str:
    x, labels = _features(1, n, 128, seed=1)
    bins, seconds = _timed(lambda: assign_bins(x, labels, 10, max_group=max_group))
    groups = int(torch.bincount(bins.rank[bins.bin == 0]).max())
    return f"| one class of {n:,} (unlabeled), 128-d, max_group {max_group:,}: k-means split | cpu | {seconds:.1f} s | {groups} groups |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-classes", type=int, default=40, help="ImageNet classes timed on CPU (then extrapolated)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--reference-sizes", type=int, nargs="*", default=[30, 60, 120, 240])
    parser.add_argument("--dtype-sizes", type=int, nargs="*", default=[], help="class sizes for float32 vs float64")
    parser.add_argument("--only-dtype", action="store_true", help="only the float32 vs float64 rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), cuda: {torch.cuda.is_available()}\n")
    print("| case | device | time | result |\n|---|---|---|---|")
    for row in dtype_rows(args.dtype_sizes):
        print(row, flush=True)
    if args.only_dtype:
        return
    for row in reference_rows(args.reference_sizes, classes=2, dim=32):
        print(row, flush=True)
    print(split_row(12_000, 5_000), flush=True)
    print(imagenet_row(args.cpu_classes, "cpu"), flush=True)
    if torch.cuda.is_available():
        imagenet_row(10, "cuda")  # warm-up
        print(imagenet_row(IMAGENET_CLASSES, "cuda"), flush=True)
    else:
        print("| ImageNet-1K shape on CUDA | - | not run: no CUDA device here | |")


if __name__ == "__main__":
    main()
