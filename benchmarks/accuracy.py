"""Accuracy benchmark: full vs random vs DQ vs ADQ on CIFAR-10 at equal data keep ratios, several seeds.

Two steps (see benchmarks/README.md):

  prepare  extract CIFAR-10's 50,000 training images (or the first --per-class of each class) from
           ../shared/data, compute every per-sample quantity of the pipeline at 32 px in 4 px patches
           (embedding, texture, view sums, GradCAM++ keep masks, bins) with the stages' own classes in worker
           processes (`--engine ray`: through `compress` on Ray, checked against its select stage), draw
           every arm's selection with `adq_ray.quotas.select`, and save the plan (keep masks and selections,
           a few hundred KB). Needs no Ray; on a GPU it takes a minute or two, on 2 busy CPU cores an hour.
  train    (no Ray; CPU or one GPU): decode the plan's images once from the tarball into memory, fill the
           dropped patches (mean colour, as `read_reconstructed` without MAE, or an MAE checkpoint), and
           train every (arm, ratio, seed) with `adq_ray.evaluate.loop.fit`, several processes at once; write
           a JSON of every run and a Markdown table of mean +- std.

Arms at one data keep ratio k (DQ's "data keep ratio" = sample ratio x kept patches / all patches), all
with exactly B = floor(rho |D| + 0.5) images, rho = k / (51/64):
  random   B images uniformly at random;
  dq       DQ's bins with an exact global budget (ADQ at alpha 0: quotas proportional to bin sizes);
  adq      ADQ at alpha 0.7;
and, reported apart, `dqcell` (DQ's literal per-(bin, class) rounding, whose count drifts from B),
`*-sel` (sampler only: mask_ratio 0, rho = k), the alpha sweep `adq-a0.5` / `adq-a1.0`, and `adq-minmax`
(importances min-max scaled before the sum-to-one normalisation).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adq_ray.evaluate.loop import Recipe, best_epoch, fit  # noqa: E402 - plain PyTorch: the train step needs no Ray

SHARED = ROOT.parent / "shared"
TAR = SHARED / "data" / "cifar10-jpeg.tar.gz"
WEIGHTS = SHARED / "weights" / "resnet20-12fca82f.th"
PLAN = ROOT / "runs" / "accuracy" / "accuracy_plan.npz"
PATCH_IMAGE_SIZE, PATCH_SIZE, MASK_RATIO = 32, 4, 0.2
GRID = PATCH_IMAGE_SIZE // PATCH_SIZE
KEPT = math.floor(GRID**2 * (1 - MASK_RATIO) + 1e-9)  # 51 of 64
PATCH_KEEP = KEPT / GRID**2
KEEP_RATIOS = (0.1, 0.2, 0.3)
SEEDS = (0, 1, 2)
ALPHA = 0.7

RECIPES = {
    # The spec's recipe (section 6) on one GPU; epochs are fitted to the time budget unless given.
    "gpu": Recipe(model="resnet18_cifar", epochs=200, batch_size=128, lr=0.1),
    # Small enough for the 2-core box: CIFAR ResNet-20, 15 epochs, batch 128, tested at epochs 5, 10 and 15. Its
    # 10% row (3 arms x 3 seeds, 6,275 images each, 2 processes of 1 thread) trains at ~350 img/s there: ~50 min.
    "cpu": Recipe(model="cifar_resnet20", epochs=15, batch_size=128, lr=0.1, test_every=5),
}


# ----------------------------------------------------------------------------------------------------- prepare


def pipeline_config(work: Path, weights: Path, **changes: Any):
    """The benchmark's pipeline config: the embedded default's CIFAR ResNet-20 models at 32 px, 4 px patches."""
    from adq_ray.config import Config

    return Config(
        input=str(work / "cifar10" / "train"),
        output=str(work / "pipeline" / "all"),
        cache=str(work / "pipeline" / "_stages"),
        image_size=32,
        backbone="cifar_resnet20",
        backbone_weights=str(weights),
        cam_model="cifar_resnet20",
        cam_weights=str(weights),
        cam_layer="layer3",
        cam_image_size=32,
        patch_image_size=PATCH_IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        mask_ratio=MASK_RATIO,
        codec="png",
        num_bins=10,
        batch_size=256,
        rho=1.0,
        sampler="random",
    ).replace(**changes)


def minmax_quotas(sizes, rep, div, rho: float, alpha: float):
    """ADQ bin quotas with Rep and Div min-max scaled to [0, 1] before the sum-to-one normalisation."""
    from adq_ray.quotas.adq import budget, importance, largest_remainder

    def scaled(x):
        span = x.max() - x.min()
        return (x - x.min()) / span if span > 0 else torch.ones_like(x)

    total = int(sizes.sum())
    b = budget(total, rho)
    ideal = alpha * importance(scaled(rep), scaled(div)) * b + (1 - alpha) * (sizes.double() * b / total)
    floors = ideal.floor()
    return largest_remainder(floors.long(), ideal - floors, sizes, b)


def compute_in_process(
    config, procs: int = 2, chunk: int = 500, per_class: int = 0, holdout: int = 0
) -> dict[str, Any]:
    """Every per-sample quantity of the pipeline's stages, with the stages' own classes, in `procs` processes.

    The listing (`list_inputs`), decode (`decode_image` at 32 px), `Embedder.embed` (texture, embedding,
    view sums, seeded by sample id), `PatchSelector.select` (GradCAM++ keep indices) and `assign_bins` over
    the classes are what the Ray stages call per batch; only the Ray scheduling is left out (on the shared
    2-core box another job's `ray stop --force` killed two Ray runs of the embed stage). `per_class` > 0:
    only the first `per_class` images of each class (by name), binned and returned on their own. `holdout` > 0:
    the last `holdout` images of each class (by name) are left out of the bins and returned apart as
    `holdout_names`, a validation split carved from the training set.
    """
    from adq_ray.bins.graphcut import assign_bins
    from adq_ray.ingest import list_inputs

    t0 = time.perf_counter()
    table = list_inputs(config).table.sort_by("sample_id")
    sample_ids = table["sample_id"].to_numpy()
    paths, labels = table["path"].to_pylist(), table["label"].to_numpy()
    cache = Path(config.cache) / "chunks"  # one file per chunk: a killed run resumes
    cache.mkdir(parents=True, exist_ok=True)
    tasks = [
        (paths[i : i + chunk], sample_ids[i : i + chunk], str(cache / f"{i // chunk:04d}.npz"))
        for i in range(0, len(paths), chunk)
    ]
    labels_all = labels
    rank = np.zeros(len(labels), dtype=np.int64)  # position of each sample within its class, in listing order
    for c in np.unique(labels):
        rank[labels == c] = np.arange(int((labels == c).sum()))
    subset = rank < per_class if per_class else np.ones(len(labels), bool)
    held = np.zeros(len(labels), bool)
    if holdout:
        class_size = np.bincount(labels)[labels]
        held = rank >= class_size - holdout
        subset &= ~held
    holdout_names = np.array(["/".join(paths[i].split("/")[-2:]) for i in np.flatnonzero(held)])
    wanted = [i for i, task in enumerate(tasks) if subset[i * chunk : i * chunk + len(task[0])].any()]
    todo = [tasks[i] for i in wanted if not Path(tasks[i][2]).exists()]
    with mp.get_context("spawn").Pool(procs, _embed_init, (config, int(labels.max()) + 1)) as pool:
        for done, _ in enumerate(pool.imap_unordered(_embed_chunk, todo), 1):
            if done % 5 == 0:
                print(f"  embedded + CAM {done} of {len(todo)} chunks ({time.perf_counter() - t0:.0f} s)", flush=True)
    parts = [dict(np.load(tasks[i][2])) for i in wanted]
    rows = np.concatenate([np.arange(i * chunk, i * chunk + len(tasks[i][0])) for i in wanted])
    keep_rows = subset[rows]
    out = {key: np.concatenate([p[key] for p in parts])[keep_rows] for key in parts[0]}
    sample_ids, labels = sample_ids[rows][keep_rows], labels_all[rows][keep_rows]
    paths = [paths[i] for i in rows[keep_rows]]
    labels_t = torch.from_numpy(labels.astype(np.int64))
    embedding = torch.from_numpy(out["embedding"])
    device = "cuda" if torch.cuda.is_available() else None
    bins = assign_bins(
        embedding, labels_t, config.num_bins, max_group=config.max_group, seed=config.seed, device=device
    )
    print(f"binned ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {
        "sample_ids": sample_ids,
        "names": np.array(["/".join(p.split("/")[-2:]) for p in paths]),
        "labels": labels_t,
        "bins": bins.bin.cpu().long(),
        "texture": torch.from_numpy(out["texture"]).double(),
        "view_sum": torch.from_numpy(out["view_sum"]).double(),
        "kept_idx": out["kept_idx"].astype(np.int64),
        "holdout_names": holdout_names,
    }


_STAGES: dict[str, Any] = {}


def _embed_init(config, num_classes: int) -> None:
    from adq_ray.embed.actor import Embedder
    from adq_ray.patches.dropper import PatchSelector

    torch.set_num_threads(1)
    _STAGES.update(embedder=Embedder(config, num_classes), selector=PatchSelector(config))


def _embed_chunk(task: tuple[list[str], np.ndarray, str]) -> str:
    from adq_ray.ingest.decode import decode_image

    paths, ids, target = task
    images = np.stack([decode_image(Path(p).read_bytes(), 32, 2**31, 2**31).image for p in paths])
    out = _STAGES["embedder"].embed(torch.from_numpy(images).permute(0, 3, 1, 2), ids)
    kept = _STAGES["selector"].select(images, np.zeros(len(images), bool))[0]
    part = {
        "texture": out["texture"].cpu().numpy(),
        "embedding": out["embedding"].cpu().numpy(),
        "view_sum": out["view_sum"].cpu().numpy(),
        "kept_idx": kept.cpu().numpy() if torch.is_tensor(kept) else np.asarray(kept),
    }
    staging = f"{target}.tmp.npz"
    np.savez(staging, **part)
    os.replace(staging, target)
    return target


def compute_with_ray(config, num_cpus: int) -> dict[str, Any]:
    """The same quantities from a pipeline run (`compress(config, until="patches")` at rho 1: every image)."""
    import ray

    from adq_ray.embed.store import read_embeddings
    from adq_ray.layout import Layout
    from adq_ray.pipeline import _tensor, compress
    from adq_ray.tables import read_parquet

    ray.init(num_cpus=num_cpus, include_dashboard=False)
    compress(config, until="patches")
    layout = Layout(config)
    inventory = layout.load_inventory().table
    scores = read_embeddings(layout.embeddings, columns=["sample_id", "label", "texture", "view_sum"], ok_only=True)
    bins_table = read_parquet(layout.bins).sort_by("sample_id")
    sample_ids = scores["sample_id"].to_numpy()
    assert np.array_equal(bins_table["sample_id"].to_numpy(), sample_ids)
    paths = dict(zip(inventory["sample_id"].to_pylist(), inventory["path"].to_pylist()))
    kept_table = read_parquet(layout.dataset, columns=["sample_id", "kept_idx"]).sort_by("sample_id")
    assert np.array_equal(kept_table["sample_id"].to_numpy(), sample_ids), "the patch stage must keep every image"
    return {
        "sample_ids": sample_ids,
        "names": np.array(["/".join(paths[int(i)].split("/")[-2:]) for i in sample_ids]),
        "labels": _tensor(scores["label"]).long(),
        "bins": _tensor(bins_table["bin"]).long(),
        "texture": _tensor(scores["texture"]).double(),
        "view_sum": _tensor(scores["view_sum"]).double(),
        "kept_idx": kept_table["kept_idx"].combine_chunks().flatten().to_numpy().reshape(len(sample_ids), KEPT),
    }


def prepare(
    work: Path,
    tar: Path,
    weights: Path,
    plan_path: Path,
    num_cpus: int,
    engine: str = "process",
    per_class: int = 0,
    holdout: int = 0,
) -> None:
    from adq_ray.ingest.cifar import extract_cifar_subset
    from adq_ray.quotas import select
    from adq_ray.quotas.adq import draw, split_over_classes
    from adq_ray.quotas.scores import cell_sizes

    t0 = time.perf_counter()
    extract_cifar_subset(tar, work / "cifar10" / "train", per_class=5000, split="train")
    print(f"extracted ({time.perf_counter() - t0:.0f} s)", flush=True)
    config = pipeline_config(work, weights)
    if engine == "ray" and holdout:
        raise SystemExit("--holdout-per-class needs --engine process")
    data = (
        compute_with_ray(config, num_cpus)
        if engine == "ray"
        else compute_in_process(config, num_cpus, per_class=per_class, holdout=holdout)
    )
    holdout_names = data.pop("holdout_names", np.array([], dtype=str))
    print(f"per-sample quantities ({engine}, {time.perf_counter() - t0:.0f} s)", flush=True)
    sample_ids, names, labels, bins = data["sample_ids"], data["names"], data["labels"], data["bins"]
    texture, view_sum = data["texture"], data["view_sum"]
    keep = np.zeros((len(sample_ids), GRID**2), dtype=bool)
    np.put_along_axis(keep, data["kept_idx"], True, axis=1)
    if not holdout:
        np.savez_compressed(work / "per_sample.npz", **{k: np.asarray(v) for k, v in data.items()})

    selections: dict[str, np.ndarray] = {}
    tables: dict[str, Any] = {}

    def add(key: str, selection) -> None:
        selections[key] = selection.selected.numpy()
        if key.endswith("-s0"):
            tables[key] = selection.table()

    common = {"num_bins": config.num_bins}
    for k in KEEP_RATIOS:
        rho = k / PATCH_KEEP
        for seed in SEEDS:
            for arm, sampler, alpha in (("random", "random", ALPHA), ("dq", "adq", 0.0), ("adq", "adq", ALPHA)):
                for suffix, r in (("", rho), ("-sel", k)):
                    add(
                        f"{arm}{suffix}-k{k:.1f}-s{seed}",
                        select(
                            bins, labels, texture, view_sum, rho=r, alpha=alpha, sampler=sampler, seed=seed, **common
                        ),
                    )
            add(
                f"dqcell-k{k:.1f}-s{seed}",
                select(bins, labels, texture, view_sum, rho=rho, alpha=0.0, sampler="dq", seed=seed, **common),
            )
            if k == KEEP_RATIOS[0]:
                for alpha in (0.5, 1.0):
                    add(
                        f"adq-a{alpha}-k{k:.1f}-s{seed}",
                        select(
                            bins, labels, texture, view_sum, rho=rho, alpha=alpha, sampler="adq", seed=seed, **common
                        ),
                    )
                base = select(bins, labels, texture, view_sum, rho=rho, alpha=ALPHA, sampler="adq", seed=seed, **common)
                quotas = minmax_quotas(base.scores.size, base.scores.rep, base.scores.div, rho, ALPHA)
                classes, cells = cell_sizes(bins, labels, config.num_bins)
                selected = draw(bins, labels, split_over_classes(quotas, cells, seed=seed), classes, seed=seed)
                selections[f"adq-minmax-k{k:.1f}-s{seed}"] = selected.numpy()
                if seed == 0:
                    tables[f"adq-minmax-k{k:.1f}-s0"] = {"quota": quotas.tolist()}

    if engine == "ray":  # the plan's draws are the pipeline's: compare with its own select stage, one arm each
        check_against_pipeline(work, config, sample_ids, selections)
    meta = {
        "config": json.loads(config.to_json()),
        "kept_patches": KEPT,
        "grid": GRID,
        "bin_tables": tables,
        "counts": {key: int(value.sum()) for key, value in selections.items()},
        "n": len(sample_ids),
        "engine": engine,
        "per_class": per_class or 5000,
        "holdout_per_class": holdout,
    }
    keys = sorted(selections)
    np.savez_compressed(
        plan_path,
        names=names,
        labels=labels.numpy().astype(np.int16),
        keep=np.packbits(keep, axis=1),
        keys=np.array(keys),
        selections=np.packbits(np.stack([selections[k] for k in keys]), axis=1),
        meta=np.array(json.dumps(meta)),
        holdout_names=holdout_names,
    )
    print(f"plan: {plan_path} ({plan_path.stat().st_size:,} B, {len(keys)} selections)", flush=True)


def check_against_pipeline(work: Path, config, sample_ids: np.ndarray, selections: dict[str, np.ndarray]) -> None:
    """Assert that the plan's seed-0 draws at 10% equal the pipeline's select stage, for every sampler."""
    from adq_ray.layout import Layout
    from adq_ray.pipeline import compress

    arms = (("adq", "adq", ALPHA), ("dq", "adq", 0.0), ("dqcell", "dq", 0.0), ("random", "random", ALPHA))
    for arm, sampler, alpha in arms:
        arm_config = config.replace(
            rho=0.1 / PATCH_KEEP, sampler=sampler, alpha=alpha, output=str(work / "pipeline" / arm)
        )
        compress(arm_config, until="select")
        chosen = set(Layout(arm_config).selected_ids().tolist())
        assert chosen == set(sample_ids[selections[f"{arm}-k0.1-s0"]].tolist()), f"{arm}: differs from the pipeline"


# ------------------------------------------------------------------------------------------------------- train


def load_plan(path: Path) -> dict[str, Any]:
    with np.load(path) as z:
        n = len(z["names"])
        keep = np.unpackbits(z["keep"], axis=1, count=GRID**2).astype(bool)
        selections = np.unpackbits(z["selections"], axis=1, count=n).astype(bool)
        return {
            "names": z["names"],
            "labels": z["labels"].astype(np.int64),
            "keep": keep,
            "selections": dict(zip(z["keys"].tolist(), selections)),
            "n": n,
            "meta": json.loads(str(z["meta"])),
            "holdout_names": z["holdout_names"].tolist() if "holdout_names" in z.files else [],
        }


def decode_split(tar: Path, split: str, names: set[str] | None = None) -> dict[str, np.ndarray]:
    """The images of one split (those in `names`, or all), decoded as the pipeline does (32 px), by name."""
    from adq_ray.ingest.decode import decode_image

    out = {}
    with tarfile.open(tar, "r|*") as stream:
        for member in stream:
            parts = member.name.removeprefix("./").split("/")
            if (
                member.isfile()
                and len(parts) == 3
                and parts[0] == split
                and (names is None or "/".join(parts[1:]) in names)
            ):
                decoded = decode_image(stream.extractfile(member).read(), 32, 2**31, 2**31)
                out["/".join(parts[1:])] = decoded.image
    return out


def filled_images(images: np.ndarray, keep: np.ndarray, fill: str, mae: str) -> np.ndarray:
    """uint8 (N, 32, 32, 3) with the dropped patches filled: mean colour of the kept pixels, or an MAE.

    The pipeline's own `fill_mean` / `reconstruct` (adq_ray.patches.fill, which needs no Ray).
    """
    from adq_ray.patches.fill import fill_mean, reconstruct

    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    mask = torch.from_numpy(keep)
    if fill == "mean":
        out = torch.cat([fill_mean(a, m) for a, m in zip(x.split(4096), mask.split(4096))])
    else:
        from adq_ray.models.mae import load_mae

        arch, _, weights = mae.partition(":")
        model = load_mae(arch, weights)
        if torch.cuda.is_available():
            model = model.cuda()
        out = torch.cat([reconstruct(model, a, m) for a, m in zip(x.split(1024), mask.split(1024))])
    return out.permute(0, 2, 3, 1).contiguous().numpy()


def runs_for(
    plan: dict[str, Any],
    arms: list[str],
    ratios: list[float],
    seeds: list[int],
    side_arms: list[str] = (),
    side_ratios: list[float] = (),
    full_seeds: int | None = None,
) -> list[dict[str, Any]]:
    """One job per (arm, keep ratio, seed) for `arms` x `ratios` and `side_arms` x `side_ratios`; `full` for the
    first `full_seeds` seeds (all by default). Largest training sets first (the pool then ends evenly)."""
    jobs = []
    for seed in seeds:
        grid = [(arm, k) for arm in arms if arm != "full" for k in ratios]
        grid += [(arm, k) for arm in side_arms for k in side_ratios]
        if "full" in arms and seed in seeds[: len(seeds) if full_seeds is None else full_seeds]:
            jobs.append({"arm": "full", "keep_ratio": 1.0, "seed": seed, "key": None, "masked": False, "n": plan["n"]})
        for arm, k in grid:
            key = f"{arm}-k{k:.1f}-s{seed}"
            if key not in plan["selections"]:
                known = sorted({name.rsplit("-k", 1)[0] for name in plan["selections"]})
                raise SystemExit(f"no selection {key!r} in the plan: arms are {known}")
            n = int(plan["selections"][key].sum())
            jobs.append(
                {"arm": arm, "keep_ratio": k, "seed": seed, "key": key, "masked": not arm.endswith("-sel"), "n": n}
            )
    return sorted(jobs, key=lambda job: -job["n"])


_SHARED: dict[str, Any] = {}


def _worker_init(arrays: str, threads: int, device: str, parent: int) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    with np.load(arrays) as z:
        _SHARED.update({k: z[k] for k in z.files})
    _SHARED["device"] = device


def _exit_with_parent(parent: int) -> None:
    """A pool worker outlives a killed `train` (its runs would hold the cores for an hour): exit with it.

    `parent` is the pid `train` passed, not the worker's getppid() at start: the parent may die first."""
    while os.getppid() == parent:
        time.sleep(5)
    os._exit(1)


def _run(job: dict[str, Any]) -> dict[str, Any]:
    """Train one job in a pool worker (images come from the arrays loaded by `_worker_init`)."""
    recipe: Recipe = job["recipe"]
    source = _SHARED["filled"] if job["masked"] else _SHARED["images"]
    index = np.flatnonzero(_SHARED[job["key"]]) if job["key"] else np.arange(len(source))
    x = torch.from_numpy(source[index]).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(_SHARED["labels"][index])
    tx = torch.from_numpy(_SHARED["test_images"]).permute(0, 3, 1, 2).contiguous()
    ty = torch.from_numpy(_SHARED["test_labels"])
    start = time.perf_counter()
    history = fit(x, y, tx, ty, recipe.replace(seed=job["seed"]), _SHARED["device"])
    best = best_epoch(history)
    return {
        **{k: v for k, v in job.items() if k != "recipe"},
        "n_train": len(index),
        "final_acc": history[-1]["test_acc"],
        "best_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "epochs": len(history),
        "wall_s": time.perf_counter() - start,
        "history": history,
    }


def _calibrate(job: dict[str, Any]) -> float:
    """Training images per second of one worker on the recipe's model (20 steps after 5 warm-up)."""
    from adq_ray.evaluate.classifier import create_classifier
    from adq_ray.models import normalize

    recipe: Recipe = job["recipe"]
    device = torch.device(_SHARED["device"])
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = create_classifier(recipe.model, recipe.num_classes).to(device=device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = normalize(torch.rand(recipe.batch_size, 3, 32, 32, device=device)).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (recipe.batch_size,), device=device)
    for step in range(25):
        if step == 5:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if cuda:
        torch.cuda.synchronize()
    return 20 * recipe.batch_size / (time.perf_counter() - start)


def train(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    plan = load_plan(args.plan)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    recipe = RECIPES[args.recipe]
    changes = {"epochs": args.epochs, "batch_size": args.batch_size, "model": args.model, "test_every": args.test_every}
    changes["lr"] = args.lr
    recipe = recipe.replace(**{k: v for k, v in changes.items() if v})
    jobs = runs_for(plan, args.arms, args.ratios, args.seeds, args.side_arms, args.side_ratios, args.full_seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "accuracy_runs.json"
    done = json.loads(results_path.read_text()) if results_path.exists() and args.resume else []
    finished = {(r["arm"], r["keep_ratio"], r["seed"], r.get("fill")) for r in done}
    jobs = [j for j in jobs if (j["arm"], j["keep_ratio"], j["seed"], args.fill) not in finished]

    held = plan["holdout_names"]  # a validation split carved from the training set: the arms are tested on it
    train_split = decode_split(args.tar, "train", set(plan["names"]) | set(held))
    test_split = {name: train_split[name] for name in held} if held else decode_split(args.tar, "test")
    eval_set = "val" if held else "test"
    images = np.stack([train_split[name] for name in plan["names"]])
    test_names = sorted(test_split)
    if args.test_per_class:  # the first N test images of each class, by name
        ranks = _rank_in_class(test_names)
        test_names = [name for name in test_names if ranks[name] < args.test_per_class]
    classes = sorted({name.split("/")[0] for name in plan["names"]})
    arrays = {
        "images": images,
        "filled": filled_images(images, plan["keep"], args.fill, args.mae),
        "labels": plan["labels"],
        "test_images": np.stack([test_split[name] for name in test_names]),
        "test_labels": np.array([classes.index(name.split("/")[0]) for name in test_names], dtype=np.int64),
        **{job["key"]: plan["selections"][job["key"]] for job in jobs if job["key"]},
    }
    arrays_path = out / "arrays.npz"
    np.savez(arrays_path, **arrays)
    print(
        f"decoded {len(images)} train / {len(test_names)} {eval_set} images, fill {args.fill} "
        f"({time.perf_counter() - start:.0f} s)",
        flush=True,
    )

    context = mp.get_context("spawn")
    with context.Pool(args.procs, _worker_init, (str(arrays_path), args.threads, device, os.getpid())) as pool:
        if args.budget_s and not args.epochs:
            rates = pool.map(_calibrate, [{"recipe": recipe}] * args.procs, chunksize=1)
            rate = sum(rates)
            # The pool runs the jobs largest first; the longest process sets the wall time. Each process is
            # assumed to keep its calibrated share (rate / procs) even when others have finished (conservative:
            # an H200 run that packed 9 equal runs on 6 processes by total work alone ran out of time).
            test = len(test_names) / 3  # one test of one run, in training-image equivalents
            cpu_tests = device == "cpu" and not args.test_every  # CPUs: test at the middle and the last epoch
            every = args.test_every or recipe.test_every
            per_epoch = _makespan([job["n"] + (0 if cpu_tests else test / every) for job in jobs], args.procs)
            fixed = _makespan([2 * test if cpu_tests else 0.0 for _ in jobs], args.procs)
            work = (args.budget_s - (time.perf_counter() - start) - 30) * rate / args.procs * args.efficiency
            epochs = int((work - fixed) / per_epoch)
            epochs = max(2, min(recipe.epochs, epochs))
            recipe = recipe.replace(epochs=epochs)
            if device == "cpu" and not args.test_every:
                recipe = recipe.replace(test_every=-(-epochs // 2))
            print(
                f"calibrated {rate:,.0f} img/s over {args.procs} processes: {epochs} epochs for {len(jobs)} runs, "
                f"testing every {recipe.test_every}",
                flush=True,
            )
        for job in jobs:
            job["recipe"] = recipe
            job["fill"] = args.fill if job["masked"] else "none"
        for result in pool.imap_unordered(_run, jobs, chunksize=1):
            result.update(
                {
                    "fill": args.fill if result["masked"] else "none",
                    "recipe": args.recipe,
                    "model": recipe.model,
                    "device": device,
                    "eval_set": eval_set,
                }
            )
            done.append(result)
            results_path.write_text(json.dumps(done, indent=1))
            print(
                f"{result['arm']:>12} k={result['keep_ratio']:.1f} seed={result['seed']} n={result['n_train']:>6} "
                f"final {100 * result['final_acc']:.2f}% best {100 * result['best_acc']:.2f}% ({result['wall_s']:.0f} s)",
                flush=True,
            )
    arrays_path.unlink()
    table = markdown(done, plan)
    (out / "accuracy.md").write_text(table)
    print(table)
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)


def _makespan(costs: list[float], procs: int) -> float:
    """The largest per-process total when `costs` go, largest first, to the least loaded of `procs` processes."""
    loads = [0.0] * max(1, procs)
    for cost in sorted(costs, reverse=True):
        loads[loads.index(min(loads))] += cost
    return max(loads)


def _rank_in_class(names: list[str]) -> dict[str, int]:
    """Position of each sorted name `<class>/<file>` within its class."""
    seen: dict[str, int] = {}
    ranks = {}
    for name in names:
        c = name.split("/")[0]
        ranks[name] = seen.get(c, 0)
        seen[c] = ranks[name] + 1
    return ranks


def markdown(results: list[dict[str, Any]], plan: dict[str, Any] | None = None) -> str:
    """Mean +- std (over seeds) of final and best accuracy (on the test set, or the held-out validation split)
    per (arm, keep ratio, fill)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        key = (r["keep_ratio"], r["arm"], r.get("fill", "mean"), r.get("model"), r["epochs"], r.get("eval_set", "test"))
        groups.setdefault(key, []).append(r)
    lines = [
        "| keep ratio | arm | fill | model, epochs | train images | seeds | tested on | final acc % | best acc % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (k, arm, fill, model, epochs, on), rs in sorted(groups.items(), key=lambda g: (g[0][0], _order(g[0][1]))):
        fill = "none" if arm == "full" or arm.endswith("-sel") else fill
        n = sorted({r["n_train"] for r in rs})
        lines.append(
            f"| {k:.1f} | {arm} | {fill} | {model}, {epochs} | {', '.join(f'{x:,}' for x in n)} | {len(rs)} | {on} "
            f"| {_mean_std([r['final_acc'] for r in rs])} | {_mean_std([r['best_acc'] for r in rs])} |"
        )
    return "\n".join(lines) + "\n"


def _order(arm: str) -> tuple:
    names = ["full", "random", "dq", "adq", "dqcell", "random-sel", "dq-sel", "adq-sel"]
    return (names.index(arm) if arm in names else len(names), arm)


def _mean_std(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    return f"{mean:.2f} +- {100 * statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def bin_report(plan: dict[str, Any]) -> str:
    """ADQ's per-bin numbers at 10% (seed 0), the spread of the importances, and the quotas of every arm."""
    tables = plan["meta"]["bin_tables"]
    adq = tables["adq-k0.1-s0"]
    imp = [row["importance"] for row in adq]
    mean = statistics.fmean(imp)
    lines = [
        "| bin | size | Rep (mean TL) | Div | importance | share r_n | quota ADQ (a=0.7) | DQ (a=0) | a=0.5 | a=1 "
        "| min-max a=0.7 | dq-cell |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, row in enumerate(adq):
        quotas = [tables[key][n]["quota"] for key in ("dq-k0.1-s0", "adq-a0.5-k0.1-s0", "adq-a1.0-k0.1-s0")]
        minmax = tables["adq-minmax-k0.1-s0"]["quota"][n]
        cell = tables["dqcell-k0.1-s0"][n]["quota"]
        lines.append(
            f"| {n} | {row['size']:,} | {row['rep']:.4f} | {row['div']:.4f} | {row['importance']:.4f} | "
            f"{row['share']:.4f} | {row['quota']:,} | {' | '.join(f'{q:,}' for q in quotas)} | {minmax:,} | {cell:,} |"
        )
    spread = f"importances {min(imp):.4f}..{max(imp):.4f} (mean {mean:.4f}: {100 * (min(imp) / mean - 1):+.1f}% .. "
    spread += f"{100 * (max(imp) / mean - 1):+.1f}%)"
    counts = plan["meta"]["counts"]
    totals = ", ".join(f"{key.split('-k')[0]} {counts[key]:,}" for key in sorted(counts) if key.endswith("k0.1-s0"))
    return "\n".join(lines) + f"\n\n{spread}; images kept at 10% (seed 0): {totals}\n"


# --------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("prepare", help="run the pipeline on CIFAR-10 and write the plan (CPU, Ray)")
    pr.add_argument("--work", type=Path, default=ROOT / "runs" / "accuracy")
    pr.add_argument("--tar", type=Path, default=TAR)
    pr.add_argument("--weights", type=Path, default=WEIGHTS)
    pr.add_argument("--plan", type=Path, default=PLAN)
    pr.add_argument("--num-cpus", type=int, default=2)
    pr.add_argument("--per-class", type=int, default=0, help="plan for the first N training images per class (0: all)")
    pr.add_argument(
        "--holdout-per-class",
        type=int,
        default=0,
        help="leave the last N training images per class out of the plan: the validation split `train` tests on",
    )
    pr.add_argument(
        "--engine",
        choices=["process", "ray"],
        default="process",
        help="stage classes in one process, or the pipeline on Ray",
    )
    tr = sub.add_parser("train", help="train the arms from the plan (no Ray)")
    tr.add_argument("--plan", type=Path, default=PLAN)
    tr.add_argument("--tar", type=Path, default=TAR)
    tr.add_argument("--out", default=str(ROOT / "runs" / "accuracy" / "train"))
    tr.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    tr.add_argument("--arms", nargs="+", default=["random", "dq", "adq"])
    tr.add_argument("--ratios", nargs="+", type=float, default=[0.1])
    tr.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    tr.add_argument("--side-arms", nargs="*", default=[], help="arms trained only at --side-ratios")
    tr.add_argument("--side-ratios", nargs="*", type=float, default=[0.1])
    tr.add_argument("--full-seeds", type=int, default=None, help="train `full` for the first N seeds only")
    tr.add_argument("--fill", choices=["mean", "mae"], default="mean")
    tr.add_argument("--mae", default="", help="arch:checkpoint for --fill mae (from `adq train-mae`)")
    tr.add_argument("--epochs", type=int, default=0, help="0: the recipe's, or fitted to --budget-s")
    tr.add_argument("--batch-size", type=int, default=0)
    tr.add_argument("--lr", type=float, default=0, help="0: the recipe's")
    tr.add_argument("--test-per-class", type=int, default=0, help="test on the first N test images per class (0: all)")
    tr.add_argument("--test-every", type=int, default=0, help="test every N epochs and after the last (recipe's)")
    tr.add_argument("--model", default="")
    tr.add_argument("--device", default="")
    tr.add_argument("--procs", type=int, default=2, help="runs trained at once")
    tr.add_argument("--threads", type=int, default=1, help="torch threads per process")
    tr.add_argument("--budget-s", type=float, default=0, help="fit the epochs to this wall time (GPU)")
    tr.add_argument("--efficiency", type=float, default=0.8, help="expected share of the calibrated rate")
    tr.add_argument("--resume", action="store_true", help="keep finished runs in --out")
    bn = sub.add_parser("bins", help="print ADQ's per-bin numbers and every arm's quotas from the plan")
    bn.add_argument("--plan", type=Path, default=PLAN)
    tb = sub.add_parser("table", help="print the table of a finished run's accuracy_runs.json")
    tb.add_argument("runs", type=Path, nargs="+")
    args = p.parse_args(argv)
    if args.command == "prepare":
        args.work.mkdir(parents=True, exist_ok=True)
        prepare(
            args.work,
            args.tar,
            args.weights,
            args.plan,
            args.num_cpus,
            args.engine,
            args.per_class,
            args.holdout_per_class,
        )
    elif args.command == "train":
        if args.fill == "mae" and not args.mae:
            raise SystemExit("--fill mae needs --mae arch:checkpoint")
        train(args)
    elif args.command == "bins":
        print(bin_report(load_plan(args.plan)))
    else:
        print(markdown([r for path in args.runs for r in json.loads(path.read_text())]))


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
