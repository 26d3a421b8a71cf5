"""Stage throughput against ceilings, in one run, on the same images, batch size and precision.

    .venv/bin/python benchmarks/pipeline.py                  # CPU default: 2,000 CIFAR-10 images, ResNet-20 @ 32
    .venv/bin/python benchmarks/pipeline.py --per-class 500  # 5,000 images
    .venv/bin/python benchmarks/pipeline.py --imagenet       # ResNet-18 @ 224 (random weights), for a GPU node

Stages and their ceilings (each ratio is stage time / ceiling time, so 1.0 = at the ceiling):
  ingest+decode  Ray `read_images(...).materialize()`  vs  PIL decode+resize of the same bytes in a plain
                 loop (1 core; the ceiling for the machine is that rate x cores), and nvJPEG
                 (`torchvision.io.decode_jpeg(device="cuda")`) when CUDA is visible;
  embed+score    `Embedder.embed` on decoded tensors, and the Ray stage `read_images -> map_batches(Embedder)`,
                 vs the bare model (`forward_features` + pooled head): 1 forward, and the 3 forwards the scores
                 need by design (the image, then its two views as one 2B batch);
  patch drop     `PatchDropper` in process and as a Ray stage vs bare GradCAM++ forward+backward at the same size;
  write          Ray `write_parquet` of the patch table vs the same payload bytes written raw to one file.
CUDA is used automatically when present (models, nvJPEG); otherwise every row is CPU.
Prints Markdown; timings are wall clock on whatever else the machine is running (note `uptime`).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from adq_ray.config import Config
from adq_ray.embed.actor import Embedder
from adq_ray.embed.texture import texture_level
from adq_ray.embed.views import two_views
from adq_ray.ingest import extract_cifar_subset, list_inputs, read_images
from adq_ray.ingest.decode import decode_image
from adq_ray.models import create_model, normalize, select_device
from adq_ray.patches.dropper import PatchDropper, PatchSelector, encode_rows
from adq_ray.patches.gradcam import GradCAMPlusPlus
from adq_ray.patches.source import read_sources
from adq_ray.pipeline import patch_dataset

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CIFAR_TAR = SHARED / "data" / "cifar10-jpeg.tar.gz"
RESNET20 = SHARED / "weights" / "resnet20-12fca82f.th"


# --------------------------------------------------------------------------------------------- timing


class Clock:
    """Wall time of a callable on `device` (CUDA synchronised before and after)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object], repeat: int = 1) -> tuple[object, float]:
        """Best of `repeat` runs (the least disturbed by other load); `self.cpu`: this process's CPU seconds, best."""
        best, out, self.cpu = float("inf"), None, float("inf")
        for _ in range(repeat):
            if self.cuda:
                torch.cuda.synchronize()
            start, cpu = time.perf_counter(), time.process_time()
            out = fn()
            if self.cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
            self.cpu = min(self.cpu, time.process_time() - cpu)
        return out, best


class Table:
    """Markdown rows: what, where, images, seconds, images/s, ratio to the named ceiling."""

    clock: Clock | None = None  # in-process CPU rows report its CPU time (robust to other load, unlike wall time)

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[str] = []
        self.times: dict[str, tuple[float, int]] = {}
        self.cpu_times: dict[str, float] = {}

    def add(
        self, key: str, what: str, where: str, n: int, seconds: float, ceiling: str | None = None, note: str = ""
    ) -> None:
        self.times[key] = (seconds, n)
        ratio = ""
        if ceiling is not None and ceiling in self.times:
            c_s, c_n = self.times[ceiling]
            ratio = f"{(seconds / n) / (c_s / c_n):.2f}x `{ceiling}`"
        note = note() if callable(note) else note
        cpu = ""
        if where.startswith("cpu") and not key.endswith("_x_cores") and self.clock is not None:
            cpu = f"{self.clock.cpu / n * 1e3:.3f}"
            self.cpu_times[key] = self.clock.cpu / n
            if ceiling in self.cpu_times:
                ratio += f" (CPU {self.cpu_times[key] / self.cpu_times[ceiling]:.2f}x)"
        self.rows.append(
            f"| `{key}` {what} | {where} | {n:,} | {seconds:.3f} | {n / seconds:,.0f} | {cpu} | {ratio} | {note} |"
        )
        print(self.rows[-1], flush=True)

    def ratio(self, key: str, ceiling: str) -> float:
        (s, n), (c_s, c_n) = self.times[key], self.times[ceiling]
        return (s / n) / (c_s / c_n)

    def per_image(self, key: str) -> float:
        s, n = self.times[key]
        return s / n

    def header(self) -> None:
        print(f"\n### {self.title}\n")
        print(
            "| measurement | device / workers | images | wall s | images/s | CPU ms/image | ratio per image: wall (CPU) | notes |"
        )
        print("|---|---|---|---|---|---|---|---|", flush=True)


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# --------------------------------------------------------------------------------------------- inputs


def cifar_inputs(workdir: Path, per_class: int) -> Path:
    return extract_cifar_subset(CIFAR_TAR, workdir / f"cifar10-train-{per_class}", per_class=per_class)


def imagenet_proxy(workdir: Path, source: list[bytes], count: int, seed: int = 0) -> list[bytes]:
    """JPEGs of ImageNet's typical shape (500x375, quality 90): CIFAR images upscaled plus sensor-like noise.

    A decode-cost proxy only (pixel count and file size near ImageNet's ~110 KB average), not ImageNet.
    """
    rng = np.random.default_rng(seed)
    out = []
    for data in source[:count]:
        with Image.open(io.BytesIO(data)) as im:
            big = np.asarray(im.convert("RGB").resize((500, 375), Image.Resampling.BICUBIC), dtype=np.float32)
        noisy = np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def pil_decode_resize(data: bytes, size: int) -> np.ndarray:
    """The decode ceiling on CPU: decode, RGB, bilinear resize; no validation."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def nvjpeg_decode_resize(blobs: list[bytes], size: int, batch: int) -> torch.Tensor:
    """nvJPEG batched decode on the GPU, then an antialiased bilinear resize to size x size (uint8)."""
    import torchvision.io as tio

    out = []
    for part in batches(len(blobs), batch):
        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs[part]]
        images = tio.decode_jpeg(data, mode=tio.ImageReadMode.RGB, device="cuda")
        if all(im.shape == images[0].shape for im in images):
            x = torch.stack(images).float()
            out.append(torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True))
        else:
            out.extend(
                torch.nn.functional.interpolate(im[None].float(), size=(size, size), mode="bilinear", antialias=True)
                for im in images
            )
    return torch.cat(out).round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------- Ray

try:  # the pipeline's own actor-pool options (moved from pipeline.py to resources.py)
    from adq_ray.resources import actor_options
except ImportError:  # pragma: no cover - older tree
    from adq_ray.pipeline import _actor_options as actor_options


def start_ray(num_cpus: int) -> None:
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def actor_threads(options: dict[str, object]) -> int:
    """torch intra-op threads inside an actor started with the pipeline's resource options."""
    import ray

    @ray.remote
    class Probe:
        def threads(self) -> int:
            return torch.get_num_threads()

    resources = {k: v for k, v in options.items() if k in ("num_cpus", "num_gpus")}
    probe = Probe.options(**resources).remote()
    try:
        return ray.get(probe.threads.remote())
    finally:
        ray.kill(probe)


def ray_embed(config: Config, inventory) -> int:
    ds = read_images(config, inventory).map_batches(
        Embedder,
        fn_constructor_kwargs={"config": config, "num_classes": len(inventory.classes)},
        batch_size=config.batch_size,
        **actor_options(config),
    )
    return ds.materialize().count()


def ray_patches(config: Config, chosen):
    """The pipeline's own patch stage (decode tasks -> PatchSelector actors -> encode tasks), materialized."""
    return patch_dataset(config, chosen).materialize()


# --------------------------------------------------------------------------------------------- stages


def marginal(t: Table, key: str, run: Callable, inventory, clock, small: int, ceiling: str) -> None:
    """Split a Ray stage's time into a fixed cost (one batch through it) and a marginal cost per further image."""
    total, n = t.times[key]
    if n <= 2 * small:
        return
    ids = inventory.table["sample_id"].to_numpy()
    sub = inventory.subset(ids[np.linspace(0, n - 1, small).astype(int)])
    _, fixed = clock(lambda: run(sub), repeat=2)
    t.add(f"{key}_fixed", f"  fixed cost: the same with {small} images", "", small, fixed)
    t.add(
        f"{key}_marginal",
        "  marginal: (full - fixed) over the extra images",
        "",
        n - small,
        max(total - fixed, 1e-9),
        ceiling,
    )


def bench_ingest(args, config, inventory, blobs, proxy, clock, device) -> tuple[Table, np.ndarray]:
    t = Table(f"Ingest + decode ({config.image_size}x{config.image_size} output)")
    t.header()
    n, size = len(blobs), config.image_size
    decoded, s = clock(lambda: np.stack([pil_decode_resize(b, size) for b in blobs]), repeat=2)
    t.add("pil", "PIL decode+resize, plain loop (ceiling per core)", "cpu, 1 core", n, s)
    t.add(
        "pil_x_cores",
        f"= ceiling for the machine, ideal x{args.num_cpus} cores",
        f"cpu, {args.num_cpus} cores",
        n,
        s / args.num_cpus,
    )
    _, s = clock(
        lambda: [decode_image(b, size, config.max_image_pixels, config.max_file_bytes) for b in blobs], repeat=2
    )
    t.add("decode_image", "our validated decode, plain loop", "cpu, 1 core", n, s, "pil")
    if args.ray:
        count, s_cold = clock(lambda: read_images(config, inventory).materialize().count())
        assert count == n
        t.add(
            "ray_read_cold",
            "Ray read_images().materialize(), first run",
            f"Ray, {args.num_cpus} CPUs",
            n,
            s_cold,
            "pil_x_cores",
        )
        _, s = clock(lambda: read_images(config, inventory).materialize().count(), repeat=2)
        t.add(
            "ray_read",
            "Ray read_images().materialize(), warm",
            f"Ray, {args.num_cpus} CPUs",
            n,
            s,
            "pil_x_cores",
            note=lambda: f"{t.ratio('ray_read', 'pil'):.2f}x the 1-core loop",
        )
        marginal(
            t,
            "ray_read",
            lambda inv: read_images(config, inv).materialize().count(),
            inventory,
            clock,
            config.batch_size,
            "pil_x_cores",
        )
    if device.type == "cuda":
        nvjpeg_decode_resize(blobs[: config.batch_size], size, config.batch_size)  # warm-up
        _, s = clock(lambda: nvjpeg_decode_resize(blobs, size, config.batch_size), repeat=2)
        t.add("nvjpeg", f"nvJPEG batched decode + resize (batch {config.batch_size})", "cuda", n, s, "pil_x_cores")
    else:
        t.rows.append("| `nvjpeg` | cuda | - | - | - | | | not run: no CUDA device |")
        print(t.rows[-1])
    if proxy:
        m = len(proxy)
        kb = sum(map(len, proxy)) / m / 1024
        _, s = clock(lambda: [pil_decode_resize(b, 224) for b in proxy], repeat=2)
        t.add(
            "pil_500x375",
            f"PIL decode 500x375 JPEG ({kb:.0f} KB avg) + resize to 224, plain loop",
            "cpu, 1 core",
            m,
            s,
            note="ImageNet-shaped proxy, for the scaling model",
        )
        _, s = clock(
            lambda: [decode_image(b, 224, config.max_image_pixels, config.max_file_bytes) for b in proxy], repeat=2
        )
        t.add("decode_image_500x375", "our validated decode, same proxy files", "cpu, 1 core", m, s, "pil_500x375")
        t.times["pil_500x375_x_cores"] = (t.times["pil_500x375"][0] / args.num_cpus, m)
        if args.ray:
            folder = Path(args.workdir) / f"proxy-{m}"
            if not folder.exists():
                (folder / "all").mkdir(parents=True)
                for i, data in enumerate(proxy):
                    (folder / "all" / f"{i:05d}.jpg").write_bytes(data)
            big = config.replace(input=str(folder), image_size=224)
            proxy_inventory = list_inputs(big)
            read_images(big, proxy_inventory).materialize()  # warm-up
            _, s = clock(lambda: read_images(big, proxy_inventory).materialize().count(), repeat=2)
            t.add(
                "ray_read_500x375",
                "Ray read_images(224).materialize(), same proxy files",
                f"Ray, {args.num_cpus} CPUs",
                m,
                s,
                "pil_500x375_x_cores",
                note=lambda: f"{t.ratio('ray_read_500x375', 'pil_500x375'):.2f}x the 1-core loop",
            )
        if device.type == "cuda":
            nvjpeg_decode_resize(proxy[: config.batch_size], 224, config.batch_size)
            _, s = clock(lambda: nvjpeg_decode_resize(proxy, 224, config.batch_size), repeat=2)
            t.add("nvjpeg_500x375", "nvJPEG, same proxy files", "cuda", m, s, "pil_500x375")
    return t, decoded


def bench_embed(args, config, inventory, decoded, clock, device, decode_table: Table) -> Table:
    t = Table(
        f"Embed + score ({config.backbone} @ {config.image_size}, batch {config.batch_size}, {args.precision_label})"
    )
    t.header()
    n, b = len(decoded), config.batch_size
    images = torch.from_numpy(decoded).permute(0, 3, 1, 2).contiguous()
    ids = np.asarray(inventory.table["sample_id"].to_numpy())
    emb = Embedder(config, num_classes=len(inventory.classes))
    model = emb.backbone
    amp = emb.amp

    def bare(copies: int) -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            for part in batches(n, b):
                x = normalize(images[part].to(device))
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                model.forward_head(model.forward_features(x), pre_logits=True)
                if copies == 3:  # the two views, one batch of 2B, as the Embedder runs them
                    x2 = torch.cat([x, x])
                    model.forward_head(model.forward_features(x2), pre_logits=True)
                if copies == -3:  # the image and its two views as one batch of 3B
                    x3 = torch.cat([x, x, x])
                    model.forward_head(model.forward_features(x3), pre_logits=True)

    def on_device(fn):
        def run() -> None:  # outputs dropped per batch; no autograd graph (the breakdown calls private helpers)
            with torch.inference_mode():
                for p in batches(n, b):
                    fn(images[p].to(device), ids[p])

        return run

    def pooled_views(x, i):
        return emb._pooled(emb.contrastive, two_views(x.float() / 255, i, config.seed))

    bare(1)  # warm-up (and cuDNN autotune on GPU)
    _, s = clock(lambda: bare(1), repeat=args.repeat)
    t.add("fwd1", "bare forward_features + pooled head, 1 forward/image", args.where, n, s)
    _, s = clock(lambda: bare(3), repeat=args.repeat)
    t.add("fwd3", "bare, 3 forwards/image (image + 2 views as a 2B batch): the fair ceiling", args.where, n, s, "fwd1")
    _, s = clock(lambda: bare(-3), repeat=args.repeat)
    t.add("fwd3_fused", "bare, 3 forwards/image as one 3B batch", args.where, n, s, "fwd3")
    _, s = clock(on_device(emb.embed), repeat=args.repeat)
    t.add(
        "embed",
        "Embedder.embed on decoded tensors",
        args.where,
        n,
        s,
        "fwd3",
        note=lambda: f"{t.ratio('embed', 'fwd1'):.2f}x `fwd1`",
    )
    _, s = clock(on_device(lambda x, i: texture_level(x.float() / 255)), repeat=args.repeat)
    t.add("texture", "  of which: texture level (Sobel)", args.where, n, s, "fwd3")
    _, s = clock(on_device(lambda x, i: two_views(x.float() / 255, i, config.seed)), repeat=args.repeat)
    t.add("views", "  of which: two seeded views (crop params + roi_align)", args.where, n, s, "fwd3")
    _, s = clock(on_device(lambda x, i: emb._pooled(emb.backbone, x)), repeat=args.repeat)
    t.add("embed_fwd", "  of which: embedding forward (B)", args.where, n, s, "fwd3")
    _, s = clock(on_device(pooled_views), repeat=args.repeat)
    t.add("views_fwd", "  of which: views + their forward (2B)", args.where, n, s, "fwd3")
    rows = {
        "sample_id": ids,
        "label": inventory.table["label"].to_numpy(),
        "status": np.array(["ok"] * n),
        "reason": np.array([""] * n),
        "note": np.array([""] * n),
        "image": decoded,
    }
    call = lambda: [emb({k: v[p] for k, v in rows.items()}).num_rows for p in batches(n, b)]  # noqa: E731
    _, s = clock(call, repeat=args.repeat)
    t.add("embed_call", "Embedder.__call__ on numpy batches (+ Arrow output)", args.where, n, s, "fwd3")

    if args.ray:
        from adq_ray.pipeline import embed_stage

        options = actor_options(config)
        threads = actor_threads(options)
        where = f"Ray, {args.num_cpus} CPUs, {options['compute'].min_size} actor(s) x " + (
            "1 GPU" if "num_gpus" in options else f"{options['num_cpus']} CPU, {threads} torch thread(s)"
        )
        _, s = clock(lambda: ray_embed(config, inventory))
        t.add("ray_embed_cold", "Ray read_images -> map_batches(Embedder), first run", where, n, s, "fwd3")
        _, s = clock(lambda: ray_embed(config, inventory))
        t.add(
            "ray_embed",
            "Ray read_images -> map_batches(Embedder), again",
            where,
            n,
            s,
            "fwd3",
            note=lambda: f"{t.ratio('ray_embed', 'fwd1'):.2f}x `fwd1`",
        )
        marginal(t, "ray_embed", lambda inv: ray_embed(config, inv), inventory, clock, config.batch_size, "fwd3")
        out = Path(args.workdir) / "embed-stage"
        shutil.rmtree(out, ignore_errors=True)
        _, s = clock(lambda: embed_stage(config, str(out)))
        t.add("embed_stage", "pipeline.embed_stage (list, read, embed, write Parquet by class)", where, n, s, "fwd3")
        # The Ray stage also decodes: its ceiling on this machine is decode + 3 forwards sharing the cores.
        dec = decode_table.per_image("pil_x_cores")
        t.times["decode+fwd3"] = ((dec + t.per_image("fwd3")) * n, n)
        t.rows.append(
            f"| `decode+fwd3` ideal decode on {args.num_cpus} cores + `fwd3`, run one after the other | {args.where} | {n:,} | "
            f"{(dec + t.per_image('fwd3')) * n:.3f} | {1 / (dec + t.per_image('fwd3')):,.0f} | | | |"
        )
        t.rows.append(
            f"| `ray_embed` vs `decode+fwd3` | | | | | | {t.ratio('ray_embed', 'decode+fwd3'):.2f}x | Ray stage over its full ceiling |"
        )
        print("\n".join(t.rows[-2:]), flush=True)
    return t


def bench_patches(args, config, inventory, clock, device) -> tuple[Table, object]:
    config = config.replace(batch_size=args.patch_batch_size or config.batch_size)
    size = config.patch_image_size
    n_note = f"{args.patch_images} images"
    t = Table(
        f"Patch drop ({config.cam_model} {config.cam_layer} GradCAM++ @ {size}, keep {config.kept_patches}/{config.grid**2}, "
        f"{config.codec}, batch {config.batch_size}, fp32; {n_note})"
    )
    t.header()
    chosen = inventory.subset(inventory.table["sample_id"].to_numpy()[: args.patch_images])
    listing = {k: chosen.table[k].to_numpy(zero_copy_only=False) for k in ("sample_id", "label", "path")}
    rows = read_sources(listing, config)  # what the Ray stage's decode tasks give the actors (source layout)
    images = rows["image"]
    n, b = len(images), config.batch_size
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    dropper = PatchDropper(config)
    model = dropper.cam.model

    def forward_only():
        with torch.inference_mode():
            for p in batches(n, b):
                model(normalize(x_all[p].to(device)))

    bare = GradCAMPlusPlus(create_model(config.cam_model, config.cam_weights).to(device), config.cam_layer)
    frozen = GradCAMPlusPlus(
        create_model(config.cam_model, config.cam_weights).to(device).requires_grad_(False), config.cam_layer
    )
    cam = lambda c=bare: [c(normalize(x_all[p].to(device)), config.grid) for p in batches(n, b)]  # noqa: E731
    call = lambda: [dropper({k: v[p] for k, v in rows.items()}) for p in batches(n, b)]  # noqa: E731
    forward_only()
    _, s = clock(forward_only, repeat=args.patch_repeat)
    t.add("cam_fwd", "bare forward (inference mode)", args.where, n, s)
    _, s = clock(cam, repeat=args.patch_repeat)
    t.add("gradcam", "bare GradCAM++ forward+backward, parameters requiring grad", args.where, n, s, "cam_fwd")
    frozen_cams, s = clock(lambda: cam(frozen), repeat=args.patch_repeat)
    same = torch.equal(bare(normalize(x_all[:b].to(device)), config.grid), frozen_cams[0])
    t.add(
        "gradcam_frozen",
        "bare GradCAM++, model.requires_grad_(False): the ceiling",
        args.where,
        n,
        s,
        "cam_fwd",
        note=f"CAMs equal: {same}",
    )
    tables, s = clock(call, repeat=args.patch_repeat)
    layout = "source" if rows["source_height"].any() else "strip"
    t.add(
        "dropper",
        f"PatchDropper.__call__ (CAM, top-k, gather, {layout}-layout encode, Arrow)",
        args.where,
        n,
        s,
        "gradcam_frozen",
    )
    selected = [PatchSelector.__call__(dropper, {k: v[p] for k, v in rows.items()}) for p in batches(n, b)]
    _, s = clock(lambda: [encode_rows(sel, config) for sel in selected], repeat=args.patch_repeat)
    t.add(
        "encode",
        f"  of which: encode_rows ({config.codec}, {layout} layout; a CPU task in the Ray stage)",
        "cpu, 1 core",
        n,
        s,
        "gradcam_frozen",
    )
    ds = None
    if args.ray:
        where = f"Ray, {args.num_cpus} CPUs, {actor_options(config)['compute'].max_size} actor(s)"
        ds, s = clock(lambda: ray_patches(config, chosen))
        t.add(
            "ray_patches_cold",
            "Ray patch stage (decode tasks -> PatchSelector actors -> encode tasks), first run",
            where,
            n,
            s,
            "gradcam_frozen",
        )
        ds, s = clock(lambda: ray_patches(config, chosen))
        t.add(
            "ray_patches",
            "Ray patch stage (decode tasks -> PatchSelector actors -> encode tasks), again",
            where,
            n,
            s,
            "gradcam_frozen",
        )
    table = pa.concat_tables(tables)
    return t, (ds, table)


def bench_write(args, datasets, clock) -> Table:
    ds, table = datasets
    t = Table("Write (the patch table)")
    t.header()
    n = table.num_rows
    payload = b"".join(table["patches"].to_pylist())
    out = Path(args.workdir) / "write"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    def raw():
        with open(out / "raw.bin", "wb") as f:
            f.write(payload)
            f.write(np.asarray(table["kept_idx"].combine_chunks().flatten()).tobytes())

    _, s = clock(raw, repeat=args.repeat)
    t.add("raw", f"raw bytes to one file ({len(payload) / 2**20:.2f} MiB patches + indices)", "cpu, 1 core", n, s)
    _, s = clock(lambda: pq.write_table(table, out / "table.parquet"), repeat=args.repeat)
    t.add(
        "pq",
        "pyarrow write_table, one Parquet file",
        "cpu, 1 core",
        n,
        s,
        "raw",
        note=f"{(out / 'table.parquet').stat().st_size / 2**20:.2f} MiB",
    )
    if ds is not None:

        def ray_write():
            shutil.rmtree(out / "ray", ignore_errors=True)
            ds.write_parquet(str(out / "ray"))

        _, s = clock(ray_write, repeat=args.repeat)
        t.add(
            "ray_write",
            "Ray write_parquet of the materialized patch dataset",
            f"Ray, {args.num_cpus} CPUs",
            n,
            s,
            "raw",
        )
    return t


# --------------------------------------------------------------------------------------------- main


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{model}, {os.cpu_count()} cores, {gpu}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=200, help="CIFAR-10 train images per class (10 classes)")
    p.add_argument(
        "--imagenet",
        action="store_true",
        help="ImageNet defaults: resnet18 @ 224 for embed and GradCAM++ (random weights: speed only)",
    )
    p.add_argument("--image-size", type=int)
    p.add_argument("--backbone")
    p.add_argument(
        "--weights", help="backbone and CAM weights: a path, 'random' (default: the shared ResNet-20 on CIFAR)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--patch-image-size", type=int, default=224)
    p.add_argument("--patch-images", type=int, default=96, help="images through the patch stage (a rho=0.1 selection)")
    p.add_argument(
        "--proxy-images", type=int, default=200, help="ImageNet-shaped JPEGs for the decode-rate row (0: skip)"
    )
    p.add_argument("--num-cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    p.add_argument(
        "--num-actors", type=int, default=0, help="Config.num_actors (0: the pipeline's automatic pool size)"
    )
    p.add_argument("--cpus-per-actor", type=float, default=0.5, help="Config.cpus_per_actor (CPU-only clusters)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in this process (default 1: what a 0.5-CPU Ray actor gets; 2 threads on 2 busy cores "
        "oversubscribe and time 3-15x worse)",
    )
    p.add_argument("--repeat", type=int, default=3, help="best of N for the in-process ingest and embed rows")
    p.add_argument(
        "--patch-batch-size",
        type=int,
        default=16,
        help="batch size of the patch rows (0: --batch-size); at 224 px a batch of 64 holds ~5 GB of activations "
        "on CPU (PatchDropper's parameters require grad), too much for a shared 24 GiB machine",
    )
    p.add_argument("--patch-repeat", type=int, default=1, help="best of N for the in-process patch rows")
    p.add_argument("--no-ray", dest="ray", action="store_false")
    p.add_argument("--skip", nargs="*", default=[], choices=["embed", "patches", "write"])
    p.add_argument("--workdir", default="/tmp/adq-bench")
    args = p.parse_args()
    imagenet = args.imagenet
    args.image_size = args.image_size or (224 if imagenet else 32)
    args.backbone = args.backbone or ("resnet18" if imagenet else "cifar_resnet20")
    args.weights = args.weights or ("random" if imagenet or not RESNET20.exists() else str(RESNET20))
    torch.set_num_threads(args.threads)
    device = select_device("auto")
    args.where = (
        f"cuda ({torch.cuda.get_device_name()})" if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    )
    workdir = Path(args.workdir)
    folder = cifar_inputs(workdir, args.per_class)
    config = Config(
        input=str(folder),
        output=str(workdir / "out"),
        image_size=args.image_size,
        backbone=args.backbone,
        backbone_weights=args.weights,
        cam_model=args.backbone,
        cam_weights=args.weights,
        cam_layer="layer4" if args.backbone.startswith("resnet") else "layer3",
        patch_image_size=args.patch_image_size,
        batch_size=args.batch_size,
        precision=args.precision,
        num_actors=args.num_actors,
        cpus_per_actor=args.cpus_per_actor,
    )
    from adq_ray.embed.actor import autocast_dtype

    amp = autocast_dtype(config, device)
    args.precision_label = f"precision={args.precision} -> {'bf16 autocast' if amp else 'fp32'}"
    inventory = list_inputs(config)
    blobs = [Path(x).read_bytes() for x in inventory.table["path"].to_pylist()]
    print(f"date: {time.strftime('%a %b %d %H:%M:%S %Z %Y')}")
    print(f"machine: {machine()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) in the driver; device {device}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"inputs: {len(blobs):,} CIFAR-10 train JPEGs ({sum(map(len, blobs)) / len(blobs):.0f} B avg), {folder}")
    if args.ray:
        start_ray(args.num_cpus)
    clock = Clock(device)
    Table.clock = clock
    results = {}
    proxy = imagenet_proxy(workdir, blobs, args.proxy_images) if args.proxy_images else []
    decode_table, decoded = bench_ingest(args, config, inventory, blobs, proxy, clock, device)
    results["ingest"] = decode_table
    if "embed" not in args.skip:
        results["embed"] = bench_embed(args, config, inventory, decoded, clock, device, decode_table)
    if "patches" not in args.skip:
        results["patches"], datasets = bench_patches(args, config, inventory, clock, device)
        if "write" not in args.skip:
            results["write"] = bench_write(args, datasets, clock)
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n### Per image, for the scaling model (seconds)\n")
    for name, key in [
        ("decode, 1 core (this input)", ("ingest", "pil")),
        ("decode 500x375 -> 224, 1 core", ("ingest", "pil_500x375")),
        ("embed+score, 3 forwards (bare)", ("embed", "fwd3")),
        ("Embedder.embed", ("embed", "embed")),
        ("Ray embed stage", ("embed", "ray_embed")),
        ("GradCAM++ fwd+bwd (frozen)", ("patches", "gradcam_frozen")),
        ("PatchDropper", ("patches", "dropper")),
        ("patch encode", ("patches", "encode")),
        ("Ray patch stage", ("patches", "ray_patches")),
    ]:
        table = results.get(key[0])
        if table and key[1] in table.times:
            print(f"- {name}: {table.per_image(key[1]) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
