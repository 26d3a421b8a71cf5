"""`adq` command line: compress | sample | evaluate | demo-data, all sharing the one validated Config.

Every Config field is a flag (`--rho 0.2`, `--no-labeled`); `--config run.yaml` supplies defaults that
flags override. Errors in values are reported as one line naming the field, with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any, Literal, get_args, get_origin

import yaml

from adq_ray import storage
from adq_ray.config import Config, ConfigError, Stage, field_help, field_types
from adq_ray.demo import demo_data
from adq_ray.errors import UserError
from adq_ray.redact import redact

UNTIL = (*get_args(Stage), "write")  # the pipeline's stages, in order (layout.STAGES)


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
    from_file = dict(values)
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    if args.command == "sample":
        values = sample_values(from_file, values, given_output=args.output, overwrite=args.overwrite)
    missing = [k for k in ("input", "output") if k not in values]
    if missing:
        raise ConfigError(f"missing required config: {', '.join('--' + m for m in missing)}")
    return Config.from_dict(values)


def sample_values(
    from_file: dict[str, Any], values: dict[str, Any], *, given_output: str | None, overwrite: bool
) -> dict[str, Any]:
    """`adq sample`: a new output beside the run it re-samples from (the --config file's output), named after
    the sampling fields and sharing that run's stage cache; writing into that very output needs --overwrite."""
    if "output" not in from_file:
        return values  # no run to re-sample from: the flags name everything
    base = _absolute(str(from_file["output"])).rstrip("/")
    values = {"cache": _absolute(str(from_file.get("cache") or base + "/_stages")), **values}
    if given_output is None:
        pick = {f.name: values.get(f.name, f.default) for f in dataclasses.fields(Config)}
        values["output"] = f"{base}-{pick['sampler']}-rho{pick['rho']:g}-alpha{pick['alpha']:g}"
    elif _absolute(given_output).rstrip("/") == base and not overwrite:
        raise ConfigError(
            f"adq sample would overwrite {given_output}, the run it re-samples from; drop --output (a new folder "
            "beside it is named after rho, alpha and sampler), give another one, or pass --overwrite"
        )
    return values


def quiet_ray_data() -> None:
    """Ray Data's progress as one bar per stage in a terminal, and none elsewhere (job logs, CI), where it would
    dump every operator every 10 s: adq_ray's own `stage <name>: running / done in N s` lines say what runs."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_operator_progress_bars = False  # one bar per dataset, i.e. per stage
    context.enable_progress_bars = sys.stderr.isatty()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # execution plans and sink summaries, per dataset
    logging.getLogger("ray.data._internal.progress").addFilter(lambda r: "Progress bars disabled" not in r.getMessage())


def _retry_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="restart a failed Ray Train worker group (a killed worker, a lost node) up to N times from its "
        "latest checkpoint (default: 2)",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=5, help="checkpoint the training state every N epochs (default: 5)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the training runs that an earlier run of this command into this output finished, and go on "
        "with unfinished ones from their latest checkpoint (after a lost driver); a change to the data, config, "
        "recipe or workers trains afresh",
    )


def _absolute(path: str) -> str:
    """Local paths made absolute, as Config does; URLs unchanged."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adq", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log every stage's progress (INFO)")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("compress", "run the pipeline (re-using every stage already committed)"),
        ("sample", "re-sample from cached embeddings and bins with a new rho/alpha/sampler; never embeds"),
    ):
        c = sub.add_parser(name, help=help_text)
        c.add_argument("--config", help="YAML file of config fields (local or s3://)")
        if name == "compress":
            c.add_argument("--until", default="write", choices=UNTIL, help="stop after this stage (default: write)")
        c.add_argument(
            "--overwrite",
            action="store_true",
            help="write into an existing non-empty output that adq-ray did not create, replacing only its own "
            "products there (dataset, manifest, summary, config, report)",
        )
        _field_flags(c)
    e = sub.add_parser("evaluate", help="train a classifier on full / random / DQ / ADQ data and compare")
    e.add_argument("--config", help="YAML file of config fields")
    e.add_argument("--test", required=True, help="ImageFolder of the test split")
    e.add_argument("--epochs", type=int, default=200, help="training epochs per classifier (default: 200)")
    e.add_argument("--model", default="resnet18_cifar", help="classifier architecture (default: resnet18_cifar)")
    e.add_argument("--train-batch-size", type=int, default=128, help="global training batch (default: 128)")
    e.add_argument("--workers", type=int, default=1, help="Ray Train workers per classifier (default: 1)")
    e.add_argument("--seeds", type=int, default=1, help="classifiers per arm, seeded 0..N-1 (default: 1)")
    e.add_argument(
        "--dq-cell",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train DQ's literal per-cell sampler (its own, drifting, image count; default: on)",
    )
    e.add_argument(
        "--mae", default="", help="MAE arch:weights (e.g. mae_vit_large_patch16:s3://b/mae.pth); empty = mean fill"
    )
    _retry_flags(e)
    _field_flags(e)
    m = sub.add_parser("train-mae", help="pretrain an MAE on the training images (Ray Train) for reconstruction")
    m.add_argument("--config", help="YAML file of config fields (input, output, patch_image_size, patch_size, ...)")
    m.add_argument("--size", default="tiny", choices=("tiny", "small", "base"), help="MAE size (default: tiny)")
    m.add_argument("--epochs", type=int, default=20, help="MAE training epochs (default: 20)")
    m.add_argument("--mae-batch-size", type=int, default=128, help="global batch (default: 128)")
    m.add_argument("--base-lr", type=float, default=1.5e-4, help="lr = base_lr x batch / 256 (default: 1.5e-4)")
    m.add_argument("--warmup-epochs", type=float, default=2.0, help="linear lr warm-up epochs (default: 2.0)")
    m.add_argument("--train-mask-ratio", type=float, default=0.75, help="random masking while training (0.75)")
    m.add_argument(
        "--norm-pix-loss",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="loss on per-patch normalised pixels, as the official pretraining; off by default: "
        "a reconstruction MAE needs plain pixels (default: off)",
    )
    m.add_argument("--checkpoint", default="", help="where to save it (default: <output>/mae/checkpoint.pth)")
    _retry_flags(m)
    m.add_argument(
        "--workers", type=int, default=1, help="Ray Train workers, one GPU each on a GPU cluster (default: 1)"
    )
    _field_flags(m)
    d = sub.add_parser(
        "demo-data", help="extract the embedded default dataset (a CIFAR-10 subset shipped with adq-ray)"
    )
    d.add_argument("--dest", default="data/cifar10", help="folder for train/ and test/ (default: data/cifar10)")
    d.add_argument("--per-class", type=int, default=100, help="training images per class (default: 100)")
    d.add_argument("--test-per-class", type=int, default=100, help="test images per class, 0 = none (default: 100)")
    d.add_argument(
        "--tar", default=None, help="a CIFAR-10 tarball (train/<class>/<file>) for more than the 100 per class shipped"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("adq_ray").setLevel(logging.INFO)
    try:
        if args.command == "demo-data":
            print(
                json.dumps(
                    {
                        k: str(v)
                        for k, v in demo_data(args.dest, args.per_class, args.test_per_class, tar=args.tar).items()
                    }
                )
            )
            return 0
        config = build_config(args)
        quiet_ray_data()
        if args.command == "evaluate":
            from adq_ray.evaluate.arms import evaluate
            from adq_ray.evaluate.resume import check_retries
            from adq_ray.evaluate.train import Recipe
            from adq_ray.models.weights import check_weights

            check_weights(config, extra=[args.mae.partition(":")[2]] if args.mae else [])
            recipe = Recipe(model=args.model, epochs=args.epochs, batch_size=args.train_batch_size)
            check_retries(args.max_failures, args.checkpoint_every)
            result = evaluate(
                config, args.test, recipe, mae=args.mae, workers=args.workers, seeds=args.seeds, dq_cell=args.dq_cell,
                max_failures=args.max_failures, checkpoint_every=args.checkpoint_every, resume=args.resume,
            )  # fmt: skip
        elif args.command == "train-mae":
            from adq_ray.evaluate.mae_train import MaeRecipe, train_mae
            from adq_ray.evaluate.resume import check_retries

            recipe = MaeRecipe(
                size=args.size, epochs=args.epochs, batch_size=args.mae_batch_size, base_lr=args.base_lr,
                warmup_epochs=args.warmup_epochs, mask_ratio=args.train_mask_ratio,
                norm_pix_loss=args.norm_pix_loss, seed=config.seed,
            )  # fmt: skip
            check_retries(args.max_failures, args.checkpoint_every)
            result = train_mae(
                config, recipe, args.checkpoint, num_workers=args.workers,
                max_failures=args.max_failures, checkpoint_every=args.checkpoint_every, resume=args.resume,
            )  # fmt: skip
        else:
            from adq_ray.pipeline import compress, resample

            if args.command == "compress":
                result = compress(config, until=args.until, overwrite=args.overwrite)
            else:
                result = resample(config, overwrite=args.overwrite)
    except Exception as err:  # the one error boundary: user errors are one line (exit 2), the rest a traceback
        if not is_user_error(err):
            raise
        print(f"adq: error: {one_line(err)}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


# OSError texts of object stores refusing the credentials (pyarrow's S3 errors are plain OSErrors).
_AUTH = ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "HTTP status 403")


def is_user_error(err: BaseException) -> bool:
    """Errors a user fixes (a value, a path, a file, a lock, credentials): printed as one line, exit 2."""
    if isinstance(err, (UserError, FileNotFoundError, NotADirectoryError, PermissionError, yaml.YAMLError)):
        return True
    return isinstance(err, OSError) and any(code in str(err) for code in _AUTH)


def one_line(err: BaseException) -> str:
    """The error's message on one line, credentials masked."""
    return redact(" ".join(str(err).split()) or type(err).__name__)


if __name__ == "__main__":
    raise SystemExit(main())
