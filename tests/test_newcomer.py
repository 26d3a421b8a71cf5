"""What a new user meets first: the packaged demo data, a light `import adq_ray`, math without Ray, and the
Ray job submitted as the README says, to a real local head."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from adq_ray.config import ConfigError
from adq_ray.demo import DEMO_CONFIG, demo_data

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
MATH = (
    "adq_ray.bins",
    "adq_ray.quotas",
    "adq_ray.patches",
    "adq_ray.patches.gradcam",
    "adq_ray.patches.grid",
    "adq_ray.patches.codec",
    "adq_ray.patches.fill",
    "adq_ray.embed.texture",
    "adq_ray.embed.views",
    "adq_ray.ingest",
    "adq_ray.ingest.decode",
    "adq_ray.ingest.sources",
    "adq_ray.demo",
    "adq_ray.config",
)
API = ("compress", "resample", "Config", "read_reconstructed", "CompressedImages", "load_mae")


def imports_in_fresh_python(code: str) -> dict:
    """Run `code` in a new interpreter; it prints a JSON value, returned here."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_math_packages_import_no_ray():
    """STYLE: a math module imports no Ray, not even through a package `__init__` (one fresh interpreter)."""
    code = (
        "import importlib, json, sys; first = None\n"
        f"for m in {MATH!r}:\n"
        "    importlib.import_module(m)\n"
        "    first = first or ('ray' in sys.modules and m)\n"
        "print(json.dumps(first))"
    )
    first = imports_in_fresh_python(code)
    assert not first, f"{first} pulled Ray in"


def test_top_level_api_is_curated_lazy_and_documented():
    code = (
        "import sys, json, adq_ray; light = 'ray' not in sys.modules and 'torch' not in sys.modules; "
        f"docs = {{n: getattr(adq_ray, n).__doc__ or '' for n in {API!r}}}; "
        "print(json.dumps([light, sorted(adq_ray.__all__), docs]))"
    )
    light, names, docs = imports_in_fresh_python(code)
    assert light, "import adq_ray must stay light (no Ray, no torch until a name is used)"
    assert set(API) <= set(names)
    for name, doc in docs.items():
        assert "Args:" in doc and "Example" in doc, f"{name} needs Args and an Example in its docstring"


def test_demo_data_comes_from_the_package(tmp_path):
    folders = demo_data(tmp_path / "cifar10", per_class=3, test_per_class=2)
    train = sorted(p.relative_to(folders["train"]).as_posix() for p in folders["train"].glob("*/*"))
    assert len(train) == 30 and train[0] == "airplane/0000.jpg"
    assert len(list(folders["test"].glob("*/*"))) == 20
    assert demo_data(tmp_path / "cifar10", per_class=3, test_per_class=2) == folders  # idempotent
    with pytest.raises(ConfigError, match="100 images per class.*tarball"):
        demo_data(tmp_path / "more", per_class=101)
    assert "backbone_weights: random" in DEMO_CONFIG.read_text()


def test_submitted_job_rejects_relative_paths_before_starting(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "jobs"))
    import compress as job

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"metadata": {"job_submission_id": "raysubmit_x"}}))
    assert job.run(["--input", "data/x", "--output", "/abs/out", "--cam-weights", "w.pth"]) == 2
    err = capsys.readouterr().err
    assert "--input data/x, --cam-weights w.pth: relative paths are not allowed" in err and "/abs/out" not in err
    # Only the supervisor's metadata marks a submission, not the words anywhere in the config.
    monkeypatch.setenv(
        "RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"env_vars": {"X": "job_submission_id"}}})
    )
    assert not job.submitted()
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert not job.submitted()
    assert job.relative_paths(["--input", "s3://b/x", "--output", "/o", "--cam-weights", "hub"]) == []


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on loopback (held open together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def local_head():
    """`ray start --head` in a temporary directory with token auth, as README "Ray job" does; stopped after."""
    temp = Path(tempfile.mkdtemp(prefix="adq-head-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    gcs, dashboard, client, agent, agent_grpc, metrics, env_agent = free_ports(7)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "PATH": f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    start = [
        str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
        "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
        "--runtime-env-agent-port", str(env_agent), "--num-cpus", "2", "--num-gpus", "0",
        "--object-store-memory", str(200 * 2**20), "--temp-dir", str(temp), "--disable-usage-stats",
    ]  # fmt: skip
    try:
        for _attempt in (1, 2):  # a loaded machine can miss Ray's start-up deadlines once
            started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=300)
            if started.returncode == 0:
                break
            stop_head(temp)
        else:
            pytest.fail(f"ray start --head failed twice:\n{(started.stdout + started.stderr)[-3000:]}")
        yield {"address": f"http://127.0.0.1:{dashboard}", "env": env, "temp": temp}
    finally:
        stop_head(temp)
        shutil.rmtree(temp, ignore_errors=True)


def head_processes(temp: Path) -> list[int]:
    """PIDs of the head in `temp`: processes whose command line or working directory names it, and all their
    descendants (Ray renames its agents and workers, `ray::IDLE`, so only the tree finds those)."""
    parent, named = {}, set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
            parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if str(temp) in line or cwd.startswith(str(temp)):
            named.add(int(proc.name))
    found, grew = set(named), True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return sorted(found)


def stop_head(temp: Path) -> None:
    """End this head's processes only (`ray stop` would end every Ray cluster on the machine): TERM, then KILL.

    The set is taken before the first signal: a child whose parent dies is re-parented and leaves the tree."""
    pids: set[int] = set()
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        pids |= set(head_processes(temp))
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.5)


def alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def submit(head: dict, *job: str) -> str:
    """`ray job submit --working-dir . -- <job>` from the checkout, as README "Ray job"; returns the logs."""
    cmd = [str(RAY), "job", "submit", "--address", head["address"], "--working-dir", ".", "--", *job]
    out = subprocess.run(cmd, env=head["env"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    return out.stdout + out.stderr


def test_ray_job_submit_with_token_auth_on_a_local_head(local_head, tmp_path):
    """A tiny job with absolute paths (they exist on this one-node cluster): the job server (ray[default]),
    token auth, the upload of the working directory (.rayignore) and jobs/compress.py's flags."""
    from util import write_image_folder

    images = write_image_folder(tmp_path / "images", classes=2, per_class=8, size=32)
    out = tmp_path / "out"
    logs = submit(
        local_head, "python", "jobs/compress.py", "--input", str(images), "--output", str(out),
        "--image-size", "32", "--backbone", "cifar_resnet20", "--backbone-weights", "random",
        "--cam-model", "cifar_resnet20", "--cam-weights", "random", "--cam-layer", "layer3",
        "--patch-image-size", "32", "--patch-size", "8", "--num-bins", "2", "--rho", "0.5", "--batch-size", "8",
    )  # fmt: skip
    assert re.search(r"Job 'raysubmit_\w+' succeeded", logs), logs[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["inputs"] == 16 and summary["counts"]["kept"] == 8
    # Quiet, honest logs: one line per stage from adq_ray, no progress dump every 10 s, no false alarms.
    assert all(f"stage {name}: done in" in logs for name in ("embed", "bins", "select", "patches"))
    for noise in ("Total Progress", "minimum number of concurrent actors", "will hang", "not writable"):
        assert noise not in logs, noise


@pytest.mark.slow
def test_ray_job_submit_runs_the_default_job_on_a_local_head(local_head):
    """README "Ray job": `ray job submit --working-dir . -- python jobs/compress.py`, no flags, token auth on.

    The working directory is uploaded without its gitignored data/ and without ../shared: the job must find
    its data in the package, and write the report on the node that runs it.
    """
    logs = submit(local_head, "python", "jobs/compress.py")
    assert re.search(r"Job 'raysubmit_\w+' succeeded", logs), logs[-4000:]
    assert "random" in logs  # no ../shared beside the uploaded copy: one line says the models are random
    report = Path(json.loads(re.findall(r'^\{"report": .*\}$', logs, re.M)[-1])["report"])
    assert report.is_file() and str(report).startswith(str(local_head["temp"]))
    summary = json.loads((report.parent.parent / "summary.json").read_text())
    print({name: stage["seconds"] for name, stage in summary["stages"].items()})
    assert summary["counts"]["inputs"] == 1000 and summary["counts"]["kept"] == 100


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A fresh, empty model cache (Hugging Face and torch) and no hub, whatever this machine has."""
    return {**os.environ, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"), **extra}


@pytest.mark.parametrize(
    "extra, why",
    [({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"), ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "127.0.0.1: ")],
)
def test_default_hub_weights_fail_before_any_stage_when_offline(tmp_path, image_folder, extra, why):
    """`adq compress` with the default `hub` weights, offline: one line naming the field and the fix, exit 2,
    no Ray started and nothing written."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "adq_ray.cli", "compress", "--input", str(image_folder), "--output", str(out)]
    run = subprocess.run(cmd, env=offline_env(tmp_path, **extra), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("adq: error: backbone_weights=hub: 'resnet18' weights download from hf-hub:timm/")
    assert why in line and "pass backbone_weights as a local path, an s3:// URL or random" in line
    assert "Started a local Ray instance" not in run.stderr and not out.exists()


def test_hub_weights_that_do_not_exist_are_named():
    from adq_ray.config import Config
    from adq_ray.errors import WeightsError
    from adq_ray.models.hub import check_hub

    with pytest.raises(WeightsError, match="cam_weights=hub: 'cifar_resnet20' has no pretrained weights"):
        check_hub(Config(input="a", output="b", backbone_weights="random", cam_model="cifar_resnet20"))
    check_hub(Config(input="a", output="b", backbone_weights="random", cam_weights="random"))  # nothing to fetch


def test_resources_are_decided_in_resources_py_only():
    """STYLE: CPU/GPU requests and pool sizes come from `adq_ray/resources.py`; call sites only spread them."""
    decisions = re.compile(
        r"ActorPoolStrategy\(|cluster_resources\(|available_resources\(|[\"']num_[cg]pus[\"']:|remote\(num_"
    )
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "adq_ray").rglob("*.py"))
        if path.name != "resources.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if decisions.search(line) and not line.lstrip().startswith(("#", '"""'))
    ]
    assert not found, "\n".join(found)
