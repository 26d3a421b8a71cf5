"""The embedded default run: a CIFAR-10 subset shipped with the package, and its config (`demo.yaml`).

The subset is the first 100 images (by file name) of each class of CIFAR-10's train and test splits, as
32x32 JPEGs (Krizhevsky 2009; see README "Licences"). Nothing here knows the checkout's layout: callers
pass where to extract and, for larger subsets, a tarball of the same layout.
"""

from __future__ import annotations

from pathlib import Path

from adq_ray.config import ConfigError
from adq_ray.ingest.cifar import extract_cifar_subset

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
DEMO_SUBSET = Path(__file__).parent / "data" / "cifar10-demo.tar.gz"
SUBSET_PER_CLASS = 100  # images per class of each split in DEMO_SUBSET


def demo_data(
    dest: str | Path, per_class: int = 100, test_per_class: int = 100, tar: str | Path | None = None
) -> dict[str, Path]:
    """Train and test ImageFolders `dest/{train,test}/<class>/<file>` of CIFAR-10 (idempotent).

    Args:
        dest: folder to extract into; an existing subset of the same size is returned untouched.
        per_class: training images per class (the first by file name).
        test_per_class: test images per class (0: no test split).
        tar: a `<split>/<class>/<file>` tarball with more images (e.g. all of CIFAR-10); default: the
            packaged subset, which holds 100 per class of each split.

    Returns:
        {"train": Path, "test": Path} (no "test" when test_per_class is 0).

    Example:
        >>> folders = demo_data("data/cifar10")  # doctest: +SKIP
    """
    if tar is None and max(per_class, test_per_class) > SUBSET_PER_CLASS:
        raise ConfigError(
            f"the packaged CIFAR-10 subset has {SUBSET_PER_CLASS} images per class, asked for "
            f"{max(per_class, test_per_class)}; pass a CIFAR-10 tarball (train/<class>/<file>, test/...) as tar"
        )
    source = Path(tar) if tar is not None else DEMO_SUBSET
    dest = Path(dest)
    folders = {"train": extract_cifar_subset(source, dest / "train", per_class=per_class, split="train")}
    if test_per_class:
        folders["test"] = extract_cifar_subset(source, dest / "test", per_class=test_per_class, split="test")
    return folders
