"""The Ray job's stage rates on a GPU node against their in-process ceilings, on the same images.

    python3 benchmarks/gpu_stages.py --input /tmp/cifar/train --job-output /tmp/adq-out --job-seconds 123.4

Run by `benchmarks/gpu_job.sh` after `jobs/compress.py` has compressed `--input` into `--job-output`; reads the
job's summary (per-stage seconds) and times, in this process, on the same JPEGs and the same resolved batch size:
  nvJPEG decode + resize (`embed.actor.decode_jpegs`) and `Embedder.embed` on decoded tensors: the embed
  stage's ceiling is the slower of the two; bare GradCAM++ (frozen parameters) at the patch size: the patch
  stage's ceiling; `assign_bins` on the GPU on the job's own embeddings: the bins stage's kernel.
Also the GPU memory per image of the embed and CAM forward passes (torch.cuda.max_memory_allocated over a
batch), which `resources.batch_size` uses. Prints Markdown and writes it to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adq_ray.config import Config  # noqa: E402
from adq_ray.embed.actor import Embedder, decode_jpegs  # noqa: E402
from adq_ray.models import create_model, normalize  # noqa: E402
from adq_ray.patches.gradcam import GradCAMPlusPlus  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeat: int = 1) -> float:
    """Best wall seconds of `repeat` runs of fn(), CUDA synchronised."""
    best = float("inf")
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def per_image_bytes(fn, batch: int) -> float:
    """Peak CUDA memory of fn() above what was allocated before, per image of its batch (0 without CUDA)."""
    if not torch.cuda.is_available():
        return 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="the ImageFolder the job compressed")
    p.add_argument("--job-output", required=True, help="the job's output (summary.json, _stages/)")
    p.add_argument("--job-seconds", type=float, required=True, help="wall time of jobs/compress.py to _SUCCESS")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--embed-images", type=int, default=20_000, help="images for the Embedder.embed ceiling")
    p.add_argument("--cam-images", type=int, default=8_000, help="images for the GradCAM++ ceiling")
    p.add_argument("--out", default="gpu_stages.md")
    p.add_argument("--device", default="cuda", help="cpu only to smoke-test this script")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    summary = json.loads((Path(args.job_output) / "summary.json").read_text())
    job_config = json.loads((Path(args.job_output) / "config.json").read_text())
    from adq_ray.resources import batch_size

    config = Config(
        input=args.input,
        output=args.job_output,
        image_size=args.image_size,
        backbone="resnet18",
        backbone_weights="random",
        cam_model="resnet18",
        cam_weights="random",
        device=args.device,
        decode_device=args.device,
        patch_image_size=job_config.get("patch_image_size", 224),
        patch_size=job_config.get("patch_size", 16),
    )
    embed_batch = batch_size(config, "embed")
    cam_batch = batch_size(config, "patches")
    paths = sorted(str(p) for p in Path(args.input).rglob("*") if p.is_file())
    t = time.perf_counter()
    blobs = [Path(p).read_bytes() for p in paths]
    read_s = time.perf_counter() - t
    n = len(blobs)
    gpu = (
        f"{torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
        if device.type == "cuda"
        else "none (smoke test)"
    )
    lines = [
        f"GPU: {gpu}; {os.cpu_count()} CPUs; torch {torch.__version__}; load {os.getloadavg()[0]:.1f}",
        f"Images: {n:,} JPEGs from {args.input} ({sum(map(len, blobs)) / n:.0f} B average; read in {read_s:.1f} s); "
        f"size {args.image_size}; batch sizes: embed {embed_batch}, patches {cam_batch} (resources.batch_size); "
        f"job batch_size field: {job_config.get('batch_size')}",
        "",
        "| stage | Ray job (jobs/compress.py) | ceiling (in process, same images) | job / ceiling |",
        "|---|---|---|---|",
    ]
    rows: dict[str, float] = {}

    def decode_all(limit: int | None = None) -> list[torch.Tensor]:
        out = []
        end = limit or n
        for s in range(0, end, embed_batch):
            out.extend(decode_jpegs(blobs[s : min(s + embed_batch, end)], args.image_size, device))
        return out

    decode_all(embed_batch)  # warm-up
    rows["nvjpeg"] = n / timed(lambda: decode_all())
    m = min(args.embed_images, n)
    images = torch.stack(decode_all(m))
    ids = np.arange(m)
    embedder = Embedder(config, num_classes=10)

    def embed_all() -> None:
        for s in range(0, m, embed_batch):
            embedder.embed(images[s : s + embed_batch], ids[s : s + embed_batch])

    embedder.embed(images[:embed_batch], ids[:embed_batch])  # warm-up, cuDNN autotune
    rows["embed_kernel"] = m / timed(embed_all, repeat=2)
    rows["embed_bytes"] = per_image_bytes(lambda: embedder.embed(images[:embed_batch], ids[:embed_batch]), embed_batch)
    embedder = None

    k = min(args.cam_images, m)
    cam = GradCAMPlusPlus(create_model("resnet18", "random").to(device).requires_grad_(False), "layer4")
    grid = config.grid
    cam_images = images[:k]
    if config.patch_image_size != args.image_size:
        cam_images = torch.nn.functional.interpolate(cam_images.float(), size=config.patch_image_size).byte()

    def cam_all() -> None:
        for s in range(0, k, cam_batch):
            cam(normalize(cam_images[s : s + cam_batch]), grid)

    cam(normalize(cam_images[:cam_batch]), grid)  # warm-up
    rows["cam_kernel"] = k / timed(cam_all, repeat=2)
    rows["cam_bytes"] = per_image_bytes(lambda: cam(normalize(cam_images[:cam_batch]), grid), cam_batch)
    images = cam_images = cam = None
    torch.cuda.empty_cache()

    bins_kernel = ""
    try:
        from adq_ray.bins import assign_bins
        from adq_ray.embed.store import read_embeddings
        from adq_ray.tables import to_matrix

        embed_dirs = sorted(Path(args.job_output, "_stages").glob("embed-*"))
        table = read_embeddings(str(embed_dirs[-1] / "embeddings"), columns=["label", "embedding"], ok_only=True)
        feats = torch.from_numpy(to_matrix(table["embedding"]))
        labels = torch.from_numpy(np.array(table["label"].to_numpy()))
        run = lambda: assign_bins(feats, labels, job_config.get("num_bins", 10), device=device)  # noqa: E731
        run()
        bins_kernel = f"`assign_bins` on the GPU, {len(labels):,} x {feats.shape[1]}-d in memory: {timed(run):.2f} s"
    except Exception as e:  # the kernel row is a comparison only: report, do not fail the run
        bins_kernel = f"`assign_bins` kernel not timed: {type(e).__name__}: {e}"

    stages = summary.get("stages", {})
    counts = summary.get("counts", {})
    inputs = counts.get("inputs", n)
    kept = counts.get("kept", 0)

    def stage_rate(name: str, images: int) -> tuple[str, float]:
        s = float(stages.get(name, {}).get("seconds", 0) or 0)
        return (f"{images / s:,.0f} img/s ({images:,} in {s:.1f} s)" if s else "not run"), (images / s if s else 0.0)

    embed_ceiling = min(rows["nvjpeg"], rows["embed_kernel"])
    text, rate = stage_rate("embed", inputs)
    lines.append(
        f"| embed (list, read, nvJPEG decode, 3 forwards + scores, write) | {text} | min(nvJPEG {rows['nvjpeg']:,.0f}, "
        f"Embedder.embed {rows['embed_kernel']:,.0f}) = {embed_ceiling:,.0f} img/s | **{rate / embed_ceiling:.0%}** |"
    )
    text, rate = stage_rate("patches", kept)
    lines.append(
        f"| patches (read, decode, GradCAM++, select, encode, write) | {text} | bare GradCAM++ (frozen) "
        f"{rows['cam_kernel']:,.0f} img/s | **{rate / rows['cam_kernel']:.0%}** |"
    )
    bins_s = float(stages.get("bins", {}).get("seconds", 0) or 0)
    lines.append(
        f"| bins (Ray task on the GPU, with Parquet I/O) | {bins_s:.1f} s for {inputs:,} samples | {bins_kernel} | |"
    )
    select_s = float(stages.get("select", {}).get("seconds", 0) or 0)
    write_s = float(stages.get("write", {}).get("seconds", 0) or 0)
    lines.append(f"| select / write (driver) | {select_s:.1f} s / {write_s:.1f} s | | |")
    lines.append(f"| time to `_SUCCESS` (jobs/compress.py wall, Ray start included) | {args.job_seconds:.1f} s | | |")
    lines += [
        "",
        f"GPU memory per image (peak over one batch): embed {rows['embed_bytes'] / 2**20:.1f} MiB at "
        f"{args.image_size} px (batch {embed_batch}); GradCAM++ {rows['cam_bytes'] / 2**20:.1f} MiB at "
        f"{config.patch_image_size} px (batch {cam_batch}).",
        f"Stage seconds from summary.json: {json.dumps({k: v.get('seconds') for k, v in stages.items()})}",
    ]
    text = "\n".join(lines)
    print(text, flush=True)
    Path(args.out).write_text(text + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps({"rows": rows, "summary_stages": stages}, indent=2))


if __name__ == "__main__":
    main()
