"""Shared fixtures: one real local Ray per session, a real S3 server on loopback, tiny image folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from util import write_image_folder

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """A real local Ray cluster, started once (ray.init costs seconds).

    Started after the S3 server so that its workers inherit the AWS_* variables, as cluster nodes
    carry their own credentials. Always a new instance (`address="local"`): a plain `ray.init()` joins any
    cluster whose address another process left in /tmp/ray on this machine.
    """
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP endpoint on 127.0.0.1 (moto server mode); yields its URL.

    The standard AWS variables point both pyarrow and s3fs at it, as on a cluster; Ray workers
    started after this fixture inherit them.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")
