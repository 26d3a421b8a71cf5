"""Ray job entry point: `ray job submit --working-dir . -- python jobs/compress.py [adq compress flags]`.

Connects to the cluster when there is one (RAY_ADDRESS, set by `ray job submit`), else starts Ray locally.
With no flags it compresses the embedded default: a CIFAR-10 subset extracted from ../shared/data, with the
CIFAR ResNet-20 of ../shared/weights as backbone and CAM model (adq_ray/demo.yaml).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

from adq_ray.cli import DEMO_CONFIG, demo_data, main  # noqa: E402


def run(argv: list[str]) -> int:
    if not argv:
        os.chdir(ROOT)  # the demo config's paths (data/, outputs/, ../shared/) are relative to the checkout
        demo_data(Path("data/cifar10"), per_class=100, test_per_class=100)
        argv = ["--config", str(DEMO_CONFIG)]
    ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    return main(["compress", *argv])


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
