"""`adq` command line: compress | sample | evaluate | demo-data, all sharing the one validated Config.

Every Config field is a flag (`--rho 0.2`, `--no-labeled`); `--config run.yaml` supplies defaults that
flags override. Errors in values are reported as one line naming the field, with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from adq_ray import storage
from adq_ray.config import Config, ConfigError, field_help, field_types

DEMO_CONFIG = Path(__file__).resolve().parent / "demo.yaml"
SHARED = Path(__file__).resolve().parents[2] / "shared"


def _field_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field; defaults are None so that only the given ones override the file."""
    group = parser.add_argument_group("config (see README 'Configuration')")
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    for name, kind in field_types().items():
        flag = "--" + name.replace("_", "-")
        shown = defaults[name] if defaults[name] != "" else "none"
        text = f"{field_help(name)} (default: {shown})".replace("%", "%%")
        if kind is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif get_origin(kind) is Literal:
            group.add_argument(flag, dest=name, choices=get_args(kind), default=None, help=text)
        else:
            group.add_argument(flag, dest=name, type=kind, default=None, metavar=name.upper(), help=text)


def build_config(args: argparse.Namespace) -> Config:
    """File values, then flags; unknown file keys and bad values raise ConfigError."""
    values: dict[str, Any] = {}
    if args.config:
        loaded = yaml.safe_load(storage.read_bytes(args.config)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{args.config}: expected a mapping of config fields")
        values.update(loaded)
    names = field_types().keys()
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    missing = [k for k in ("input", "output") if k not in values]
    if missing:
        raise ConfigError(f"missing required config: {', '.join('--' + m for m in missing)}")
    return Config.from_dict(values)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adq", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("compress", "run the pipeline (re-using every stage already committed)"),
        ("sample", "re-sample from cached embeddings and bins with a new rho/alpha/sampler; never embeds"),
    ):
        c = sub.add_parser(name, help=help_text)
        c.add_argument("--config", help="YAML file of config fields (local or s3://)")
        if name == "compress":
            c.add_argument("--until", default="write", help="stop after this stage: embed|bins|select|patches|write")
        _field_flags(c)
    e = sub.add_parser("evaluate", help="train a classifier on full / random / DQ / ADQ data and compare")
    e.add_argument("--config", help="YAML file of config fields")
    e.add_argument("--test", required=True, help="ImageFolder of the test split")
    e.add_argument("--epochs", type=int, default=200)
    e.add_argument("--model", default="resnet18_cifar")
    e.add_argument("--train-batch-size", type=int, default=128)
    e.add_argument("--workers", type=int, default=1)
    e.add_argument(
        "--mae", default="", help="MAE arch:weights (e.g. mae_vit_large_patch16:s3://b/mae.pth); empty = mean fill"
    )
    _field_flags(e)
    d = sub.add_parser("demo-data", help="extract the embedded default dataset (a CIFAR-10 subset) from ../shared")
    d.add_argument("--dest", default="data/cifar10")
    d.add_argument("--per-class", type=int, default=100)
    d.add_argument("--test-per-class", type=int, default=100)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("adq_ray").setLevel(logging.INFO)
    try:
        if args.command == "demo-data":
            print(
                json.dumps(
                    {k: str(v) for k, v in demo_data(Path(args.dest), args.per_class, args.test_per_class).items()}
                )
            )
            return 0
        config = build_config(args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"adq: error: {err}", file=sys.stderr)
        return 2
    if args.command == "evaluate":
        from adq_ray.evaluate.arms import evaluate_command

        result = evaluate_command(config, args)
    else:
        from adq_ray.pipeline import compress, resample

        result = compress(config, until=args.until) if args.command == "compress" else resample(config)
    print(json.dumps(result, indent=2, default=str))
    return 0


def demo_data(dest: Path, per_class: int, test_per_class: int) -> dict[str, Path]:
    """Train and test ImageFolders extracted from ../shared/data/cifar10-jpeg.tar.gz (idempotent)."""
    from adq_ray.ingest.cifar import extract_cifar_subset

    tar = SHARED / "data" / "cifar10-jpeg.tar.gz"
    if not tar.exists():
        raise FileNotFoundError(f"the embedded default dataset needs {tar} (the shared folder beside the checkout)")
    return {
        "train": extract_cifar_subset(tar, dest / "train", per_class=per_class, split="train"),
        "test": extract_cifar_subset(tar, dest / "test", per_class=test_per_class, split="test"),
    }


if __name__ == "__main__":
    raise SystemExit(main())
