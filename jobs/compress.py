"""Ray job entry point: `ray job submit --working-dir . -- python jobs/compress.py [adq compress flags]`.

Connects to the cluster when there is one (RAY_ADDRESS, set by `ray job submit`), else starts Ray locally.
Without --input or --config it compresses the embedded default (adq_ray/demo.yaml): the CIFAR-10 subset
shipped in the package, extracted into `data/cifar10/` beside this folder (on the node that runs the job),
with the CIFAR ResNet-20 as backbone and CAM model. Its trained weights come from
`../shared/weights/resnet20-12fca82f.th` when that file exists beside the checkout, else the models are
random (one line says so); any flag overrides the default (`--backbone-weights PATH --cam-weights PATH`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adq_ray.cli import main, parser  # noqa: E402
from adq_ray.demo import DEMO_CONFIG, demo_data  # noqa: E402

SHARED_WEIGHTS = ROOT.parent / "shared" / "weights" / "resnet20-12fca82f.th"  # fast path, when beside the checkout
PATH_FLAGS = ("config", "input", "output", "cache", "backbone_weights", "contrastive_weights", "cam_weights")


def submitted() -> bool:
    """True inside a job started by `ray job submit` (its supervisor puts the submission id in the job config)."""
    from adq_ray.resources import job_config

    return bool((job_config().get("metadata") or {}).get("job_submission_id"))


def relative_paths(argv: list[str]) -> list[str]:
    """The flags of `argv` that name a relative local path (`--input data/x`), as `--flag value`."""
    args = vars(parser().parse_args(["compress", *argv]))
    found = []
    for name in PATH_FLAGS:
        value = args.get(name)
        if value and value not in ("hub", "random") and "://" not in value and not os.path.isabs(value):
            found.append(f"--{name.replace('_', '-')} {value}")
    return found


def demo_argv(argv: list[str]) -> list[str]:
    """The embedded default's flags (data extracted, paths absolute), then the caller's overrides."""
    folders = demo_data(ROOT / "data" / "cifar10", per_class=100, test_per_class=0)
    demo = ["--config", str(DEMO_CONFIG), "--input", str(folders["train"])]
    demo += ["--output", str(ROOT / "outputs" / "cifar10-demo")]
    if SHARED_WEIGHTS.exists():
        demo += ["--backbone-weights", str(SHARED_WEIGHTS), "--cam-weights", str(SHARED_WEIGHTS)]
    elif "--backbone-weights" not in argv:
        print(
            f"adq demo: {SHARED_WEIGHTS} not found, so the backbone and CAM ResNet-20 are random (bins then follow "
            "colour and texture); pass --backbone-weights PATH --cam-weights PATH for trained ones",
            file=sys.stderr,
        )
    return [*demo, *argv]


def run(argv: list[str]) -> int:
    if submitted() and relative_paths(argv):
        print(
            f"adq: error: {', '.join(relative_paths(argv))}: relative paths are not allowed in a submitted job: it "
            "runs in a copy of the uploaded working directory (without gitignored folders such as data/) on the "
            "head node; pass absolute paths that exist on every node, or s3:// URLs",
            file=sys.stderr,
        )
        return 2
    demo = not any(flag in argv for flag in ("--input", "--config", "-h", "--help"))
    report = demo and "--output" not in argv
    if demo:
        argv = demo_argv(argv)
    from adq_ray.resources import init_ray

    init_ray(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    status = main(["compress", *argv])
    if report and status == 0:
        print(json.dumps({"report": str(ROOT / "outputs" / "cifar10-demo" / "report" / "report.html")}))
    return status


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
