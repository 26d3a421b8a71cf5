"""Rerun the storage rows of docs/RELIABILITY.md with DEFAULT retry settings (minutes, not a test).

    .venv/bin/python tests/fault_matrix.py [row ...]     # rows: slowdown, down-embed, down-write

Real moto server behind `faultproxy.FaultProxy` on loopback, a tiny ImageFolder (3 x 12 images, 32 px),
tiny random-weight models; prints one line per row: what happened, how long it took, the error line.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow.fs as pafs  # noqa: E402
import ray  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402
from test_faults import TINY  # noqa: E402  (the fault tests' run, here with default retry settings)
from util import write_image_folder  # noqa: E402

from adq_ray import storage  # noqa: E402
from adq_ray.config import Config  # noqa: E402
from adq_ray.errors import UserError  # noqa: E402
from adq_ray.layout import Layout  # noqa: E402
from adq_ray.pipeline import compress  # noqa: E402
from adq_ray.tables import read_parquet  # noqa: E402


def when_seen(proxy: FaultProxy, needle: str, action) -> None:
    """Run `action()` once the proxy has seen a request whose path contains `needle` (in a thread)."""

    def wait() -> None:
        while not any(needle in path for _, path, _ in list(proxy.seen)):
            time.sleep(0.05)
        action()

    threading.Thread(target=wait, daemon=True).start()


def outcome(config: Config) -> str:
    """`_SUCCESS` and the manifest's status counts, or what is missing."""
    if not storage.is_committed(config.output):
        return "no _SUCCESS"
    statuses = read_parquet(Layout(config).manifest)["status"].to_pylist()
    return "_SUCCESS; " + ", ".join(f"{s} {statuses.count(s)}" for s in sorted(set(statuses)))


def attempt(label: str, config: Config, recover=None) -> None:
    """Run `compress(config)`, then `recover()` (the endpoint back) and print the row."""
    start = time.monotonic()
    try:
        compress(config)
        result = "exit 0"
    except UserError as err:
        result = f"adq: error: {err}"
    except Exception as err:  # noqa: BLE001 - reported, not hidden
        result = f"TRACEBACK {type(err).__name__}: {err}"
    took = time.monotonic() - start
    if recover is not None:
        recover()
    print(f"| {label} | {took:.0f} s | {outcome(config)} | {result} |", flush=True)


def main(rows: list[str]) -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1")
    fs = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", allow_bucket_creation=True)
    tmp = Path(tempfile.mkdtemp(prefix="fault-matrix-"))
    folder = write_image_folder(tmp / "images", classes=3, per_class=12, size=32)
    for bucket in ("matrix", "out"):
        fs.create_dir(bucket)
    for path in sorted(folder.rglob("*.*")):
        with fs.open_output_stream(f"matrix/train/{path.relative_to(folder)}") as f:
            f.write(path.read_bytes())
    proxy = FaultProxy(f"http://{host}:{port}", max_stall=600)
    os.environ["AWS_ENDPOINT_URL"] = proxy.url
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print("| row | took | output | what the user sees |\n|---|---|---|---|")
    if "slowdown" in rows:
        config = Config(input="s3://matrix/train", output=str(tmp / "slowdown"), **TINY)
        proxy.fail(-1, prefix="/matrix/train/class_1/")
        attempt("503 forever on one class prefix during embed", config)
        proxy.heal()
        attempt("  same command after recovery", config)
    if "down-embed" in rows:
        config = Config(input="s3://matrix/train", output=str(tmp / "down-embed"), **TINY)
        proxy.seen.clear()
        when_seen(proxy, "/matrix/train/class_", proxy.down)
        attempt("endpoint down during embed (defaults)", config, proxy.up)
        attempt("  same command after recovery", config)
    if "down-write" in rows:
        config = Config(input=str(folder), output="s3://out/run", **TINY)
        proxy.seen.clear()
        proxy.down_on("/out/run/dataset.tmp-", ".parquet")  # the patch stage's Ray Data write
        attempt("endpoint down during the patch write (defaults)", config, proxy.up)
        attempt("  same command after recovery", config)
    ray.shutdown()
    proxy.close()
    server.stop()


if __name__ == "__main__":
    main(sys.argv[1:] or ["slowdown", "down-embed", "down-write"])
