"""A deterministic CIFAR-10 subset as an ImageFolder: the job's embedded default dataset and test split."""

from __future__ import annotations

import bisect
import os
import shutil
import tarfile
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path


def extract_cifar_subset(
    tar_path: str | Path,
    dest: str | Path,
    per_class: int,
    split: str = "train",
    classes: Sequence[str] | None = None,
) -> Path:
    """Extract the first `per_class` files (sorted by name) of each class of `split` to `dest/<class>/`.

    The tarball (`<split>/<class>/<file>` members, in any order) is streamed once, holding only the
    candidates so far in memory. `dest` appears all at once (written beside it, then renamed), so an
    existing `dest` with the same classes and counts is the same subset and is returned untouched.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    dest = Path(dest)
    if dest.exists():
        return _check_existing(dest, per_class, classes)
    chosen = _first_per_class(Path(tar_path), per_class, split, classes)
    staging = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex[:12]}")
    for name, files in chosen.items():
        (staging / name).mkdir(parents=True)
        for file, data in files.items():
            (staging / name / file).write_bytes(data)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staging, dest)
    except OSError:  # another process published it first
        shutil.rmtree(staging)
        return _check_existing(dest, per_class, classes)
    return dest


def _first_per_class(
    tar_path: Path, per_class: int, split: str, classes: Sequence[str] | None
) -> dict[str, dict[str, bytes]]:
    """{class: {file: bytes}} with the `per_class` smallest file names of each class, in one pass."""
    kept: dict[str, dict[str, bytes]] = defaultdict(dict)
    order: dict[str, list[str]] = defaultdict(list)  # each class's kept names, sorted
    with tarfile.open(tar_path, mode="r|*") as tar:
        for member in tar:
            parts = member.name.removeprefix("./").split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] != split:
                continue
            _, name, file = parts
            if classes is not None and name not in classes:
                continue
            names = order[name]
            if len(names) == per_class and file > names[-1]:
                continue
            bisect.insort(names, file)
            kept[name][file] = tar.extractfile(member).read()
            if len(names) > per_class:
                del kept[name][names.pop()]
    missing = sorted(set(classes or []) - set(kept))
    if not kept or missing:
        raise ValueError(f"{tar_path} has no {split}/<class>/<file> members for class(es) {missing or 'any'}")
    short = {name: len(files) for name, files in kept.items() if len(files) < per_class}
    if short:
        raise ValueError(f"{tar_path} has fewer than {per_class} {split} files for {short}")
    return kept


def _check_existing(dest: Path, per_class: int, classes: Sequence[str] | None) -> Path:
    """Return `dest` if it holds `per_class` files for each expected class; refuse to touch it otherwise."""
    counts = {d.name: sum(1 for f in d.iterdir() if f.is_file()) for d in dest.iterdir() if d.is_dir()}
    same_classes = classes is None or set(counts) == set(classes)
    if not counts or not same_classes or any(n != per_class for n in counts.values()):
        raise FileExistsError(f"{dest} exists but is not a {per_class}-per-class subset; remove it or choose another")
    return dest
