"""A run never loses inputs, never writes or deletes what it does not own, and fails early and in one line.

Real files, real Ray (one session), a real S3 server on loopback; one tiny run shared by the checks.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from util import TINY_MODELS, make_bucket, write_image_folder

from adq_ray import ownership, storage
from adq_ray.cli import main
from adq_ray.config import Config, ConfigError
from adq_ray.errors import InputError, LockError, OwnershipError, WeightsError
from adq_ray.ingest import list_inputs, walk_input
from adq_ray.layout import Layout
from adq_ray.pipeline import Run, compress, resample
from adq_ray.redact import redact
from adq_ray.tables import read_parquet
from adq_ray.write.manifest import build_manifest

TINY = dict(
    **TINY_MODELS,
    patch_image_size=32,
    patch_size=16,
    num_bins=2,
    rho=0.3,
    batch_size=16,
    codec="png",
)
SECRET = "SEKRET42"


def _tiny(tmp: Path, input: Path | str, **changes) -> Config:
    return Config(input=str(input), output=str(tmp / "out"), **{**TINY, **changes})


def _flags() -> list[str]:
    """TINY as CLI flags (no hub weights: the tests run offline)."""
    return [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]


def _odd_entries(root: Path) -> dict[str, str]:
    """Entries that are not regular files, under `root`; returns {relative path: expected reason prefix}."""
    os.mkfifo(root / "class_0" / "pipe.jpg")
    (root / "class_0" / "gone.png").symlink_to(root / "nowhere.png")
    (root / "class_1" / "loop").symlink_to(root)  # a directory symlink loop ...
    (root / "class_0" / "up").symlink_to(root / "class_1")  # ... and a second one through it
    (root / "class_1" / "alias.png").symlink_to(root / "class_0" / "0000.png")  # a file symlink: a real input
    return {
        "class_0/pipe.jpg": "not a regular file: fifo",
        "class_0/gone.png": "broken symlink",
        "class_1/loop": "directory symlink (not followed)",
        "class_0/up": "directory symlink (not followed)",
    }


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    """One full run on 2 classes x 8 images plus odd entries, its cache at a path holding a secret parameter."""
    tmp = tmp_path_factory.mktemp("safety")
    folder = write_image_folder(tmp / "images", classes=2, per_class=8, size=32)
    odd = _odd_entries(folder)
    config = _tiny(tmp, folder, cache=str(tmp / f"cache?X-Amz-Signature={SECRET}"))
    return config, compress(config), odd


def test_listing_ends_and_rejects_every_non_regular_entry(run) -> None:
    """Item 6: loops end, nothing is listed twice, FIFOs/dangling links/directory symlinks are rejected rows."""
    config, summary, odd = run
    manifest = read_parquet(Layout(config).manifest)
    root = Path(config.input)
    rows = {
        Path(p).relative_to(root).as_posix(): (s, r)
        for p, s, r in zip(*manifest.select(["path", "status", "reason"]).to_pydict().values())
    }
    assert len(rows) == manifest.num_rows == 16 + 1 + len(odd)  # 16 images, the file symlink, the odd entries
    for rel, reason in odd.items():
        assert rows[rel][0] == "rejected" and rows[rel][1].startswith(reason), (rel, rows[rel])
    assert rows["class_1/alias.png"][0] in ("kept", "not_selected")
    assert summary["counts"]["rejected"] == len(odd)


def test_artifacts_and_logs_redact_secrets(run, tmp_path, caplog) -> None:
    """Item 8: no artifact of the run holds the secret in its cache path; redact() masks URI credentials."""
    config, summary, _ = run
    for path in Path(config.output).rglob("*"):
        if path.is_file() and path.suffix in ("", ".json", ".html", ".parquet"):
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in json.dumps(summary)
    assert json.loads(config.to_json())["cache"].endswith("X-Amz-Signature=***")
    uri = "s3://AKID:SECRET@bucket/p?X-Amz-Signature=abc&X-Amz-Credential=AKID%2F1&part=2"
    assert redact(uri) == "s3://***@bucket/p?X-Amz-Signature=***&X-Amz-Credential=***&part=2"
    assert "SECRET" not in Config(input=uri, output=str(tmp_path / "o")).to_json()
    with caplog.at_level(logging.INFO, logger="adq_ray"):
        compress(config, until="bins")  # re-uses every stage and logs their paths
    assert caplog.records and SECRET not in caplog.text


def test_zero_budget_fails_in_select_and_releases_the_lock(run) -> None:
    """Item 9: a zero budget is one error naming rho and the readable count, before the patch stage."""
    config, _, _ = run
    tiny_rho = config.replace(rho=0.01)
    with pytest.raises(InputError, match=r"rho=0\.01 of 17 readable images is a budget of 0"):
        compress(tiny_rho)
    assert not storage.exists(storage.join(config.output, ownership.LOCK))  # released in finally
    assert not storage.is_committed(tiny_rho.output)  # _SUCCESS removed, nothing published


def test_changed_input_reruns_what_depends_on_it(run) -> None:
    """Item 3: the embed stage is keyed by the listing; `adq sample` still finds an unchanged input's cache."""
    config, _, odd = run
    again = resample(config.replace(rho=0.5))
    assert again["stages"]["embed"]["reused"] and again["stages"]["bins"]["reused"]
    root = Path(config.input)
    write_image_folder(root / "new", classes=1, per_class=3, size=32, seed=7)  # adds new/class_0/*
    for f in (root / "new" / "class_0").iterdir():
        f.rename(root / "class_1" / f"new-{f.name}")
    shutil.rmtree(root / "new")
    (root / "class_0" / "0002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="no cached embed stage"):
        resample(config)  # the cache is for the input as it was
    summary = compress(config)
    assert not summary["stages"]["embed"]["reused"]
    manifest = read_parquet(Layout(config).manifest)
    listed = sorted(
        os.path.join(d, name)
        for d, dirs, files in os.walk(root)
        for name in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]
    )
    assert sorted(manifest["path"].to_pylist()) == listed  # every input of the current listing, once
    assert manifest.num_rows == 16 + 1 + len(odd) + 3 - 1
    before = walk_input(config).digest
    os.utime(root / "class_0" / "0003.png", ns=(1, 1))  # same path and size, new mtime: re-embedded
    assert walk_input(config).digest != before
    assert not compress(config, until="embed")["stages"]["embed"]["reused"]


def test_refuses_overlaps_files_and_foreign_outputs(ray_session, tmp_path, capsys) -> None:
    """Item 4: refusals before any work, exit 2; --overwrite replaces only adq-ray's products."""
    folder = write_image_folder(tmp_path / "data" / "images", classes=2, per_class=4, size=32)
    flags = _flags()
    cases = {
        "inside": ["--input", str(folder), "--output", str(tmp_path / "data")],
        "contains": ["--input", str(folder), "--output", str(folder / "out")],
        "file": ["--input", str(folder), "--output", str(tmp_path / "afile.txt")],
    }
    (tmp_path / "afile.txt").write_text("not a folder")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "precious.txt").write_text("keep me")
    cases["foreign"] = ["--input", str(folder), "--output", str(tmp_path / "foreign")]
    before = sorted(p for p in tmp_path.rglob("*"))
    for name, args in cases.items():
        assert main(["compress", *args, *flags]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("adq: error: ") and err.count("\n") == 1, (name, err)
        assert {"inside": "overlap", "contains": "overlap", "file": "is a file", "foreign": "--overwrite"}[name] in err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    foreign = _tiny(tmp_path, folder).replace(output=str(tmp_path / "foreign"))
    (tmp_path / "foreign" / "dataset").mkdir()
    (tmp_path / "foreign" / "dataset" / "x.parquet").write_bytes(b"theirs")
    compress(foreign, until="embed", overwrite=True)
    assert (tmp_path / "foreign" / "precious.txt").read_text() == "keep me"
    assert not (tmp_path / "foreign" / "dataset").exists()  # an adq-ray product name: replaced
    assert (tmp_path / "foreign" / ownership.OUTPUT_MARKER).exists()
    compress(foreign, until="embed")  # now ours: no --overwrite needed


def test_commit_and_cleanup_touch_only_what_carries_our_marker(tmp_path) -> None:
    """Item 4: commit never replaces a foreign directory; only our leftover staging directories are removed."""
    theirs = tmp_path / "out" / "dataset"
    theirs.mkdir(parents=True)
    (theirs / "data.bin").write_bytes(b"theirs")
    staging = storage.staging_dir(str(theirs))
    storage.write_bytes(storage.join(staging, "part.bin"), b"ours")
    with pytest.raises(OwnershipError, match="did not create"):
        storage.commit(staging, str(theirs))
    assert (theirs / "data.bin").read_bytes() == b"theirs"
    config = Config(input=str(tmp_path / "in"), output=str(tmp_path / "out"), cache=str(tmp_path / "cache"))
    leftover = tmp_path / "out" / "dataset.tmp-0123456789ab"
    foreign = tmp_path / "out" / "other.tmp-aaaaaaaaaaaa"
    dead_pid = _dead_pid()
    cached_dead = tmp_path / "cache" / "embed-1.tmp-bbbbbbbbbbbb"
    cached_live = tmp_path / "cache" / "embed-1.tmp-cccccccccccc"
    for d in (leftover, foreign, cached_dead, cached_live):
        d.mkdir(parents=True)
        (d / "part.bin").write_bytes(b"x")
    ownership.mark_staging(str(leftover))
    ownership.mark_staging(str(cached_live))  # this process: alive
    marker = {**ownership.owner(), "pid": dead_pid}
    (cached_dead / storage.OWNED).write_text(json.dumps(marker))
    removed = ownership.clean_staging(config)
    # The refused commit's staging directory is ours (commit marked it) and under the output: removed too.
    assert sorted(removed) == sorted([staging, str(leftover), str(cached_dead)])
    assert foreign.exists() and cached_live.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_one_writer_per_output_local(tmp_path, capsys, caplog) -> None:
    """Item 5: a second run exits 2 naming the holder; a dead holder's lock is taken over with a warning."""
    folder = write_image_folder(tmp_path / "images", classes=2, per_class=4, size=32)
    out = tmp_path / "out"
    with ownership.OutputLock(str(out)) as lock:
        holder = json.loads((out / ownership.LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["run"] == lock.run
        rc = main(["compress", "--input", str(folder), "--output", str(out), *_flags()])
        err = capsys.readouterr().err
        assert rc == 2 and "locked by another run" in err and f"pid {os.getpid()}" in err
        with pytest.raises(LockError):
            ownership.OutputLock(str(out)).acquire()
    assert not (out / ownership.LOCK).exists()  # released
    stale = {**ownership.owner(), "pid": _dead_pid(), "run": "old", "expires": time.time() + 3600}
    (out / ownership.LOCK).write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING, logger="adq_ray"), ownership.OutputLock(str(out)) as lock:
        assert json.loads((out / ownership.LOCK).read_text())["run"] == lock.run
    assert "taking over the lock" in caplog.text and "is not running" in caplog.text


def test_lock_is_renewed_and_a_lost_lock_stops_commits(tmp_path) -> None:
    """Item 5: the holder's heartbeat keeps the lease fresh; a run whose lock was taken over commits nothing."""
    out = tmp_path / "out"
    with ownership.OutputLock(str(out), lease_seconds=0.6) as lock:
        first = json.loads((out / ownership.LOCK).read_text())["expires"]
        time.sleep(0.8)
        assert json.loads((out / ownership.LOCK).read_text())["expires"] > first  # renewed past the first lease
        lock.check()
        (out / ownership.LOCK).write_text(json.dumps({**ownership.owner(), "run": "usurper", "expires": 1e12}))
        time.sleep(0.6)
        with pytest.raises(LockError, match="lost the lock"):
            lock.check()
    assert json.loads((out / ownership.LOCK).read_text())["run"] == "usurper"  # not deleted: not ours


def test_one_writer_per_output_s3(s3_server, caplog) -> None:
    """Item 5 on S3: a conditional-create lease; a live lease refuses, an expired one is taken over."""
    out = make_bucket("lock-bucket") + "/out"
    first = ownership.OutputLock(out)
    first.acquire()
    try:
        with pytest.raises(LockError, match="locked by another run"):
            ownership.OutputLock(out).acquire()
    finally:
        first.release()
    assert not storage.exists(storage.join(out, ownership.LOCK))
    expired = {"user": "x", "host": "elsewhere", "pid": 1, "run": "old", "expires": time.time() - 1}
    storage.write_json(storage.join(out, ownership.LOCK), expired)
    with caplog.at_level(logging.WARNING, logger="adq_ray"), ownership.OutputLock(out) as lock:
        assert storage.read_json(storage.join(out, ownership.LOCK))["run"] == lock.run
    assert "lease expired" in caplog.text


def test_parquet_labels_are_dense_over_distinct_values(tmp_path) -> None:
    """Item 7: a label 20,000,000 is one class, not 20M; strings and ints alike."""
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, "PNG")
    images = [png.getvalue()] * 5
    pq.write_table(pa.table({"image": images, "label": [20_000_000, 3, None, 3, -1]}), tmp_path / "ints.parquet")
    inv = list_inputs(Config(input=str(tmp_path / "ints.parquet"), output=str(tmp_path / "o")))
    assert inv.classes == ["3", "20000000"]
    assert inv.table["label"].to_pylist() == [1, 0, -1, 0, -1]
    pq.write_table(pa.table({"image": images, "label": ["b", "a", "b", None, "c"]}), tmp_path / "s.parquet")
    inv = list_inputs(Config(input=str(tmp_path / "s.parquet"), output=str(tmp_path / "o")))
    assert inv.classes == ["a", "b", "c"] and inv.table["label"].to_pylist() == [1, 0, 1, -1, 2]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_validate_early(tmp_path) -> None:
    """Item 9: seed >= 0 in Config; missing or malicious weights fail on the driver before any work."""
    with pytest.raises(ConfigError, match="seed must be >= 0"):
        Config(input="x", output="y", seed=-1)
    folder = write_image_folder(tmp_path / "images", classes=2, per_class=2, size=32)
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"w": _Evil()}))
    torch_file = tmp_path / "notes.pth"
    torch_file.write_text("not a checkpoint")
    for weights, error in (
        (evil, WeightsError),
        (torch_file, WeightsError),
        (tmp_path / "absent.pth", FileNotFoundError),
    ):
        config = _tiny(tmp_path, folder, backbone_weights=str(weights))
        start = time.perf_counter()
        with pytest.raises(error):
            compress(config)
        assert time.perf_counter() - start < 30
        assert not (tmp_path / "out").exists()  # refused before the output was touched


def test_cli_error_boundary(ray_session, tmp_path, capsys) -> None:
    """Item 10: user errors are one line and exit 2; --until has fixed choices; other errors keep their traceback."""
    folder = write_image_folder(tmp_path / "images", classes=2, per_class=2, size=32)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("rho: [0.1\nalpha: 0.3\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = ["--output", str(tmp_path / "out"), *_flags()]
    for args, needle in (
        (["--input", str(tmp_path / "missing"), *out], "input not found"),
        (["--input", str(empty), *out], "empty"),
        (["--config", str(bad_yaml), "--input", str(folder), *out], "while parsing"),
        (["--input", str(folder), *out, "--seed", "-1"], "seed must be >= 0"),
    ):
        assert main(["compress", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("adq: error: ") and err.count("\n") == 1 and needle in err, err
    with pytest.raises(SystemExit) as exit_:
        main(["compress", "--input", str(folder), *out, "--until", "bogus"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(pa.ArrowInvalid):  # not a user error: the traceback stays (exit 1)
        main(["compress", "--input", str(corrupt), "--output", str(tmp_path / "out2"), *_flags()])


def test_cleanup_failure_never_masks_the_error(tmp_path, caplog) -> None:
    """Item 10: when a stage fails and its staging directory cannot be removed, the stage's error surfaces."""
    config = _tiny(tmp_path, tmp_path)
    stuck: list[Path] = []

    def body(staging: str) -> None:
        path = Path(staging) / "stuck.bin"
        path.write_bytes(b"x")
        stuck.append(path)
        _make_undeletable(path)
        raise ValueError("the original error")

    try:
        with caplog.at_level(logging.WARNING, logger="adq_ray"), pytest.raises(ValueError, match="original error"):
            Run(config, listing="fixed").stage("embed", str(tmp_path / "stage"), body)
        assert "could not remove" in caplog.text
    finally:
        for path in stuck:
            _undo_undeletable(path)


def _make_undeletable(path: Path) -> None:
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
            pytest.skip("needs chattr +i as root")
    else:
        path.parent.chmod(0o500)


def _undo_undeletable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=False)
    else:
        path.parent.chmod(0o700)


def test_manifest_redacts_paths_and_reasons() -> None:
    """An input given as s3://KEY:SECRET@bucket/ lists paths that carry the secret: the manifest masks them
    (and reasons quoting a URI) as `redact` does, row for row, vectorised."""
    paths = [f"s3://AKID:{SECRET}@bucket/a/{i}.jpg" for i in range(3)]
    inventory = pa.table(
        {
            "sample_id": [0, 1, 2],
            "path": paths,
            "label": [0, 0, 0],
            "class_name": ["a"] * 3,
            "nbytes": [10, 10, 0],
        }
    )
    scores = pa.table(
        {
            "sample_id": [0, 1, 2],
            "status": ["ok", "ok", "rejected"],
            "reason": [None, None, f"unreadable: {paths[2]}?X-Amz-Signature={SECRET}: empty"],
            "note": [None, None, None],
            "texture": [0.5, 0.5, None],
        }
    )
    bins = pa.table({"sample_id": [0, 1], "bin": [0, 1], "rank": [0, 0]})
    manifest = build_manifest(inventory, scores, bins, np.array([0]), np.array([0]))
    assert (
        manifest["path"].to_pylist() == [redact(p) for p in paths] == [f"s3://***@bucket/a/{i}.jpg" for i in range(3)]
    )
    reason = scores["reason"][2].as_py()
    assert (
        manifest["reason"].to_pylist()[2]
        == redact(reason)
        == "unreadable: s3://***@bucket/a/2.jpg?X-Amz-Signature=*** empty"
    )
    assert manifest["status"].to_pylist() == ["kept", "not_selected", "rejected"]
    assert SECRET not in str(manifest.to_pylist())
