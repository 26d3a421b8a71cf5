import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from util import make_bucket

from adq_ray import storage


def _stage(uri):
    staging = storage.staging_dir(uri)
    storage.write_bytes(storage.join(staging, "part-0.bin"), b"abc")
    storage.write_bytes(storage.join(staging, "sub", "part-1.bin"), b"defg")
    return staging


@pytest.mark.parametrize("remote", [False, True])
def test_commit_publishes_all_or_nothing(tmp_path, remote, request):
    if remote:
        request.getfixturevalue("s3_server")
        uri = make_bucket("commit-bucket") + "/run/stage"
    else:
        uri = str(tmp_path / "run" / "stage")
    staging = _stage(uri)
    assert not storage.is_committed(uri)  # written but not published
    storage.commit(staging, uri, {"fingerprint": "x"})
    assert storage.is_committed(uri)
    assert not storage.exists(staging)
    assert storage.read_bytes(storage.join(uri, "sub", "part-1.bin")) == b"defg"
    assert storage.read_json(storage.join(uri, storage.SUCCESS)) == {"fingerprint": "x"}
    assert storage.total_bytes(uri) == 7  # bookkeeping files excluded
    # A second commit replaces the first wholesale.
    staging = storage.staging_dir(uri)
    storage.write_bytes(storage.join(staging, "only.bin"), b"z")
    storage.commit(staging, uri)
    assert not storage.exists(storage.join(uri, "part-0.bin"))
    assert storage.read_bytes(storage.join(uri, "only.bin")) == b"z"
    # A stamp tells a rewritten file from the one seen before; no file (or a folder) has none.
    seen = storage.stamp(storage.join(uri, "only.bin"))
    assert seen is not None and seen["size"] == 1 and seen == storage.stamp(storage.join(uri, "only.bin"))
    storage.write_bytes(storage.join(uri, "only.bin"), b"zz")
    assert storage.stamp(storage.join(uri, "only.bin")) not in (seen, None)
    assert storage.stamp(storage.join(uri, "absent.bin")) is None and storage.stamp(storage.join(uri, "sub")) is None


def test_remove_file_and_dir(tmp_path):
    storage.write_bytes(str(tmp_path / "d" / "f"), b"1")
    storage.remove(str(tmp_path / "d" / "f"))
    assert not (tmp_path / "d" / "f").exists()
    storage.remove(str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()
    storage.remove(str(tmp_path / "absent"))  # no error


WORKER_READ = """
import atexit, json, os, sys
import ray
from ray.cluster_utils import Cluster
from adq_ray import resources, storage

driver = os.environ["AWS_ENDPOINT_URL"]
os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # the nodes' own environment: nothing listens there
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
os.environ["AWS_ENDPOINT_URL"] = driver
atexit.register(cluster.shutdown)  # also when an assertion below fails: no head outlives the test


@ray.remote
def read(uri):
    storage.configure(storage.RetryPolicy(attempts=1, connect_timeout=2, request_timeout=5, deadline=0))
    try:
        return storage.read_bytes(uri).decode()
    except storage.StorageError as err:
        return f"failed: {err}"


for init in (ray.init, resources.init_ray):
    init(address=cluster.address, log_to_driver=False)
    print(init.__name__, ray.get(read.remote(sys.argv[1])), flush=True)
    ray.shutdown()
# A submitted job whose runtime_env sets one of the variables: Ray refuses a key given twice, so init_ray
# leaves that one to the job and still hands over the endpoint.
os.environ[resources.JOB_CONFIG_VARIABLE] = json.dumps({"runtime_env": {"env_vars": {"AWS_REGION": "us-east-1"}}})
resources.init_ray(address=cluster.address, log_to_driver=False)
print("submitted", ray.get(read.remote(sys.argv[1])), flush=True)
ray.shutdown()
"""


def test_workers_read_from_the_driver_s3_endpoint(s3_server, tmp_path):
    """A worker that resolves s3:// itself reaches the driver's AWS_ENDPOINT_URL, not its node's (init_ray)."""
    uri = make_bucket("worker-env") + "/hello.txt"
    storage.write_bytes(uri, b"hello")
    script = tmp_path / "worker_read.py"
    script.write_text(WORKER_READ)
    # Its own Ray temp dir: a Cluster writes its address where a plain `ray.init()` on this machine would find
    # and join it (short, for Ray's socket paths).
    ray_tmp = tempfile.mkdtemp(prefix="adqr", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    try:
        out = subprocess.run([sys.executable, str(script), uri], capture_output=True, text=True, timeout=180, env=env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = dict(
        line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("init ", "init_ray ", "submitted "))
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert lines["init"].startswith("failed: "), lines  # plain ray.init: the worker used its node's endpoint
    assert "127.0.0.1:9" in lines["init"] or "onnect" in lines["init"], lines
    assert lines["init_ray"] == "hello", lines
    assert lines["submitted"] == "hello", lines


def test_worker_env_names_where_s3_is_never_credentials(monkeypatch):
    for k, v in {
        "AWS_ENDPOINT_URL": "http://minio:9000",
        "AWS_REGION": "eu-west-1",
        "AWS_SECRET_ACCESS_KEY": "s",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert storage.worker_env() == {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_REGION": "eu-west-1"}
    assert storage.worker_env({"AWS_REGION": "us-east-1"}) == {"AWS_ENDPOINT_URL": "http://minio:9000"}
