"""Real object-store faults (moto behind `faultproxy.FaultProxy` on loopback), no mocks.

A transient fault is retried and loses nothing; one that outlives the retries fails the stage with one
clear error and commits nothing; a stall ends in the stall/timeout error. Retry bounds, timeouts and the
stall limit come from the Config, set small here so each fault costs seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from faultproxy import FaultProxy
from util import TINY_MODELS, write_image_folder

from adq_ray import storage
from adq_ray.config import Config
from adq_ray.pipeline import Layout, compress
from adq_ray.tables import read_parquet
from adq_ray.watchdog import StallError

BUCKET = "adq-faults"
TINY = dict(
    **TINY_MODELS,
    patch_image_size=32,
    num_bins=2,
    rho=0.3,
    batch_size=16,
    num_actors=1,
)
# Two tries per request (SDK) and per operation (ours), second-scale timeouts; a stall limit above the
# few seconds a fresh Ray worker needs to import torch on a loaded 2-core machine.
FAST = dict(storage_attempts=2, connect_timeout=1.0, request_timeout=2.0, stall_seconds=30.0)
CLASSES, PER_CLASS = 3, 6


@pytest.fixture(scope="module")
def store(s3_server, tmp_path_factory):
    """The input (3 classes x 6 images) uploaded straight to moto; the proxy in front of it."""
    host = s3_server.split("://", 1)[1]
    fs = pafs.S3FileSystem(endpoint_override=host, scheme="http", allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    folder = write_image_folder(tmp_path_factory.mktemp("faults") / "images", CLASSES, PER_CLASS, size=32)
    for path in sorted(folder.rglob("*.*")):
        with fs.open_output_stream(f"{BUCKET}/train/{path.relative_to(folder)}") as f:
            f.write(path.read_bytes())
    proxy = FaultProxy(s3_server, max_stall=50.0)
    yield proxy
    proxy.close()


@pytest.fixture
def proxy(store, ray_session, monkeypatch):
    """The proxy, healthy, as the driver's S3 endpoint (pinned into the filesystems Ray workers get)."""
    store.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", store.url)
    yield store
    store.reset()


@pytest.fixture
def bare_proxy(store, monkeypatch):
    """The proxy as the S3 endpoint, without Ray (storage calls on this process only)."""
    store.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", store.url)
    storage.configure(storage.RetryPolicy(attempts=2, connect_timeout=1.0, request_timeout=2.0, base_delay=0.2))
    yield store
    storage.configure(storage.RetryPolicy())
    store.reset()


def config(tmp_path: Path, **changes) -> Config:
    values = {**TINY, **FAST, **changes}
    return Config(input=f"s3://{BUCKET}/train", output=str(tmp_path / "out"), **values)


def assert_nothing_lost(cfg: Config) -> None:
    assert storage.is_committed(cfg.output)
    manifest = read_parquet(Layout(cfg).manifest)
    assert manifest.num_rows == CLASSES * PER_CLASS
    assert set(manifest["status"].to_pylist()) == {"kept", "not_selected"}, manifest["reason"].to_pylist()


def assert_nothing_committed(cfg: Config) -> None:
    committed = [p for p in Path(cfg.output).rglob(storage.SUCCESS)] if Path(cfg.output).exists() else []
    assert committed == []
    assert not [p for p in Path(cfg.output).rglob("*.tmp-*")] if Path(cfg.output).exists() else True


def test_503_forever_on_a_prefix_fails_the_stage_then_a_rerun_through_more_503s_loses_nothing(proxy, tmp_path):
    """SlowDown forever on one class: the embed stage fails, nothing committed, no rejected row anywhere.

    The rerun after recovery meets 5 more SlowDowns on another class: retried (SDK, then ours), and
    every image ends kept or not_selected.
    """
    proxy.fail(-1, prefix=f"/{BUCKET}/train/class_2/")
    cfg = config(tmp_path)
    start = time.monotonic()
    with pytest.raises(storage.TransientStorageError) as failure:
        compress(cfg)
    message = str(failure.value)
    assert "\n" not in message and "stage embed" in message and "/train/class_2/" in message
    assert "503" in message and "object(s) failed" in message, message
    assert time.monotonic() - start < 90
    assert_nothing_committed(cfg)
    proxy.heal()
    proxy.fail(5, prefix=f"/{BUCKET}/train/class_1/")
    compress(cfg.replace(storage_attempts=3))
    assert proxy.count("fail", prefix=f"/{BUCKET}/train/class_1/") == 5  # the faults were served
    assert_nothing_lost(cfg)


def test_connection_refused_is_one_clear_error_within_the_timeout(proxy, tmp_path):
    """The endpoint is down: `adq compress` ends with exit 2 and one line naming the endpoint."""
    proxy.down()
    cfg = config(tmp_path)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**TINY, **FAST}.items()]
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "adq_ray.cli", "compress", f"--input={cfg.input}", f"--output={cfg.output}", *flags],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AWS_ENDPOINT_URL": proxy.url},
    )
    elapsed = time.monotonic() - start
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[-1].startswith("adq: error: object store:") and f"127.0.0.1:{proxy.port}" in lines[-1], lines
    assert "transient" in lines[-1]
    retrying = float(re.search(r"over (\d+) s", lines[-1]).group(1))
    assert retrying <= 10, lines[-1]  # 2 operation tries x 2 SDK tries of a refused connection, with backoff
    assert elapsed < 180  # the bound (3 minutes), interpreter start (torch, Ray imports) included
    assert not storage.exists(storage.join(cfg.output, storage.SUCCESS))


def test_stalled_response_ends_in_the_timeout_error(proxy, tmp_path):
    """Reads of one class get no answer: each request times out (request_timeout), retries end, the stage fails."""
    proxy.stall(prefix=f"/{BUCKET}/train/class_0/")
    cfg = config(tmp_path, stall_seconds=60.0)
    with pytest.raises(storage.TransientStorageError, match="Timeout was reached|timed out"):
        compress(cfg)
    assert_nothing_committed(cfg)


def test_stall_without_timeouts_is_the_stall_error(proxy, tmp_path):
    """Requests that hang longer than the stall limit: the stage is stopped after stall_seconds, naming the endpoint."""
    proxy.stall(prefix=f"/{BUCKET}/train/class_0/")
    cfg = config(tmp_path, request_timeout=60.0, stall_seconds=12.0)
    start = time.monotonic()
    with pytest.raises(StallError) as failure:
        compress(cfg)
    assert time.monotonic() - start < 45 < proxy.max_stall  # stopped by the limit, not by the proxy letting go
    message = str(failure.value)
    assert "stage embed made no progress for 12 s" in message and "Embedder" in message, message
    assert f"endpoint {proxy.url} answers" in message, message
    proxy.heal()  # release the hung reads before the next test
    assert_nothing_committed(cfg)


def test_storage_calls_retry_transient_errors_and_classify_what_survives(bare_proxy):
    """Driver-side storage calls: 503s within the bound are absorbed; beyond it, one TransientStorageError."""
    uri = f"s3://{BUCKET}/train/class_0/0001.jpg"
    expected = storage.read_bytes(uri)
    bare_proxy.fail(3, prefix=f"/{BUCKET}/train/class_0/")  # 2 SDK tries x 2 operation tries = 4 > 3
    assert storage.read_bytes(uri) == expected
    assert bare_proxy.count("fail") == 3
    bare_proxy.fail(-1, prefix=f"/{BUCKET}/train/class_0/")
    with pytest.raises(storage.TransientStorageError, match=r"read s3://adq-faults/.*503.*after 2 tries"):
        storage.read_bytes(uri)
    bare_proxy.heal()
    bare_proxy.down()
    with pytest.raises(storage.TransientStorageError, match=f"127.0.0.1:{bare_proxy.port}"):
        storage.exists(uri)


def test_only_errors_of_the_object_itself_become_rejections(bare_proxy):
    """404 after listing and 403 are rejected rows; a 503 is never one (the batch fails instead)."""
    from adq_ray.ingest.read import _read_file

    fs, path = storage.resolve(f"s3://{BUCKET}/train/class_1/0002.jpg")
    policy = storage.policy()
    assert isinstance(_read_file(fs, policy, path), bytes)
    gone = _read_file(fs, policy, f"{BUCKET}/train/class_1/never-there.jpg")
    assert gone.reason.startswith("unreadable: gone after listing (404)")
    bare_proxy.fail(-1, status=403)
    assert _read_file(fs, policy, path).reason.startswith("unreadable: forbidden (403)")
    bare_proxy.heal()
    bare_proxy.fail(-1, status=503)
    failed = _read_file(fs, policy, path)
    assert isinstance(failed, storage.TransientStorageError) and "503" in str(failed)
    for status, transient in ((500, True), (502, True), (504, True), (404, False), (403, False)):
        bare_proxy.heal()
        bare_proxy.fail(-1, status=status)
        with pytest.raises(OSError) as raised:
            storage.read_all(fs, path)
        assert storage.is_transient(raised.value) == transient, (status, raised.value)
        assert storage.is_permanent(raised.value) == (not transient), (status, raised.value)


def test_s3_uris_keep_keys_verbatim_and_take_credentials_and_options():
    fs, path = storage.resolve("s3://KEY:SECRET@bucket/a b/x#1.jpg")
    assert path == "bucket/a b/x#1.jpg"
    fs, path = storage.resolve("s3://bucket/prefix?region=eu-west-3")
    assert path == "bucket/prefix" and fs.region == "eu-west-3"
    message = str(storage.TransientStorageError("read s3://KEY:SECRET@bucket/k", "boom", 3, 2, 1.0))
    assert "SECRET" not in message and "3 object(s) failed" in message and "\n" not in message
