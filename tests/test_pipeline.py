"""End to end on real Ray: tiny folders, bad inputs, S3, resume after a kill, re-sampling without models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from util import TINY_MODELS, make_bucket, write_image_folder

from adq_ray import storage
from adq_ray.config import Config
from adq_ray.ingest.decode import decode_image
from adq_ray.patches.grid import patchify
from adq_ray.patches.reconstruct import decode_rows
from adq_ray.pipeline import Layout, compress, resample
from adq_ray.quotas.adq import budget
from adq_ray.tables import read_parquet

TINY = dict(
    **TINY_MODELS,
    patch_image_size=64,
    num_bins=4,
    rho=0.3,
    batch_size=16,
    codec="png",  # lossless, for the bit-exact round trip
)


def tiny_config(tmp_path: Path, input: str, **changes) -> Config:
    return Config(input=input, output=str(tmp_path / "out"), **{**TINY, **changes})


def manifest_of(config: Config):
    return read_parquet(Layout(config).manifest)


@pytest.fixture(scope="module")
def tiny_run(ray_session, tmp_path_factory):
    """One full run on 3 classes x 20 images, shared by the checks below."""
    tmp = tmp_path_factory.mktemp("tiny")
    folder = write_image_folder(tmp / "images", classes=3, per_class=20, size=40)
    config = tiny_config(tmp, str(folder))
    return config, compress(config)


def test_run_accounts_for_every_input(tiny_run):
    config, summary = tiny_run
    assert storage.is_committed(config.output)
    manifest = manifest_of(config)
    assert manifest.num_rows == 60 and len(set(manifest["sample_id"].to_pylist())) == 60
    assert set(manifest["status"].to_pylist()) == {"kept", "not_selected"}
    kept = manifest.filter(pc.equal(manifest["status"], "kept"))
    assert kept.num_rows == budget(60, config.rho) == summary["counts"]["kept"]
    # Bins partition each class: every valid input has one bin, and each class uses every bin.
    for label in range(3):
        rows = manifest.filter(pc.equal(manifest["label"], label))
        assert sorted(set(rows["bin"].to_pylist())) == list(range(config.num_bins))
    dataset = read_parquet(Layout(config).dataset)
    assert sorted(dataset["sample_id"].to_pylist()) == sorted(kept["sample_id"].to_pylist())
    assert summary["patch_keep_ratio"] == config.kept_patches / config.grid**2
    assert 0 < summary["storage_ratio"] and summary["stored_bytes"] == storage.total_bytes(Layout(config).dataset)
    assert (Path(config.output) / "report" / "report.html").exists()


def test_kept_patches_round_trip_bit_exact(tiny_run):
    """Stored patches equal the patches of the source image decoded at the patch size (png is lossless)."""
    config, _ = tiny_run
    manifest = manifest_of(config)
    paths = dict(zip(manifest["sample_id"].to_pylist(), manifest["path"].to_pylist()))
    table = read_parquet(Layout(config).dataset)
    images, keep = decode_rows(table)
    for row, image, mask in zip(table.to_pylist(), images, keep):
        source = decode_image(
            Path(paths[row["sample_id"]]).read_bytes(),
            config.patch_image_size,
            config.max_image_pixels,
            config.max_file_bytes,
        )
        expected = patchify(torch.from_numpy(np.array(source.image)).permute(2, 0, 1)[None], config.patch_size)[0]
        got = patchify(image[None], config.patch_size)[0]
        kept_idx = row["kept_idx"]
        assert mask.sum() == config.kept_patches and mask[kept_idx].all()
        assert torch.equal(got[kept_idx], expected[kept_idx])
        assert not got[~mask].any()  # dropped patches are not stored


def test_resample_reuses_embeddings_and_bins(tiny_run):
    config, first = tiny_run
    again = resample(config.replace(rho=0.5, alpha=0.0))
    assert again["stages"]["embed"]["reused"] and again["stages"]["bins"]["reused"]
    assert not again["stages"]["select"]["reused"]
    assert again["counts"]["kept"] == budget(60, 0.5)
    assert first["stages"]["embed"]["reused"] is False


def test_resample_without_cache_refuses(tmp_path, image_folder):
    with pytest.raises(FileNotFoundError, match="run `adq compress` first"):
        resample(tiny_config(tmp_path, str(image_folder)))


def _bad_folder(root: Path) -> dict[str, str]:
    """A folder with every kind of bad input; returns {file name: expected status}."""
    write_image_folder(root, classes=2, per_class=8, size=36)
    good = root / "class_0"
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert("L").save(good / "gray.png")
    Image.fromarray(pixels).convert("CMYK").save(good / "cmyk.jpg")
    Image.fromarray(pixels).convert("RGBA").save(good / "rgba.png")
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(good / "sixteen.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "class_1" / "huge.png")  # over the pixel limit
    data = (good / "0001.jpg").read_bytes()
    (good / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (good / "corrupt.jpg").write_bytes(b"\xff\xd8\xff" + bytes(rng.integers(0, 255, 500, dtype=np.uint8)))
    (good / "empty.png").write_bytes(b"")
    (good / "notes.txt").write_text("not an image")
    (good / ".DS_Store").write_bytes(b"\x00\x01")
    Image.fromarray(pixels).save(root / "stray.png")  # not in a class folder: unlabeled
    return {
        "gray.png": "ok", "cmyk.jpg": "ok", "rgba.png": "ok", "sixteen.png": "ok",
        "huge.png": "rejected", "truncated.jpg": "rejected", "corrupt.jpg": "rejected", "empty.png": "rejected",
        "notes.txt": "rejected", ".DS_Store": "rejected", "stray.png": "rejected",
    }  # fmt: skip


def test_bad_inputs_are_rejected_with_reasons_and_nothing_is_lost(ray_session, tmp_path):
    expected = _bad_folder(tmp_path / "bad")
    files = sorted(p for p in (tmp_path / "bad").rglob("*") if p.is_file())
    config = tiny_config(tmp_path, str(tmp_path / "bad"), max_image_pixels=36 * 36, num_bins=2)
    summary = compress(config)
    manifest = manifest_of(config)
    assert manifest.num_rows == len(files) == summary["counts"]["inputs"]
    rows = {Path(r["path"]).name: r for r in manifest.to_pylist()}
    for name, status in expected.items():
        row = rows[name]
        if status == "ok":
            assert row["status"] in ("kept", "not_selected"), row
        else:
            assert row["status"] == "rejected" and row["reason"], row
    assert "too many pixels" in rows["huge.png"]["reason"]
    assert "unlabeled" in rows["stray.png"]["reason"]
    assert rows["cmyk.jpg"]["note"] and rows["sixteen.png"]["note"]
    assert sum(summary["counts"]["rejected_by_reason"].values()) == summary["counts"]["rejected"] == 7


def test_wrong_input_path_fails_clearly(ray_session, tmp_path):
    with pytest.raises(FileNotFoundError, match="input not found"):
        compress(tiny_config(tmp_path, str(tmp_path / "nowhere")))


def test_s3_in_s3_out(ray_session, s3_server, tmp_path):
    bucket = make_bucket("adq-e2e")
    folder = write_image_folder(tmp_path / "images", classes=2, per_class=10, size=32)
    for path in folder.rglob("*.*"):
        storage.write_bytes(f"{bucket}/train/{path.relative_to(folder)}", path.read_bytes())
    config = Config(input=f"{bucket}/train", output=f"{bucket}/out", **{**TINY, "num_bins": 2})
    summary = compress(config)
    assert storage.is_committed(config.output)
    manifest = manifest_of(config)
    assert manifest.num_rows == 20 and all(p.startswith("s3://adq-e2e/train/") for p in manifest["path"].to_pylist())
    assert summary["counts"]["kept"] == budget(20, config.rho)
    assert storage.exists(f"{bucket}/out/report/report.html")
    assert read_parquet(f"{bucket}/out/dataset").num_rows == summary["counts"]["kept"]


def test_resume_after_kill_runs_no_embedding_model(ray_session, tmp_path):
    """Kill the driver once the embed stage is committed; the re-run re-uses it instead of embedding again."""
    folder = write_image_folder(tmp_path / "images", classes=2, per_class=12, size=32)
    config = tiny_config(tmp_path, str(folder), num_bins=2)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "num_bins"]
    cmd = [
        sys.executable,
        "-m",
        "adq_ray.cli",
        "compress",
        "--input",
        str(folder),
        "--output",
        config.output,
        "--num-bins",
        "2",
        *flags,
    ]
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    embed_dir = Layout(config).stage("embed")
    deadline = time.time() + 240
    while not storage.is_committed(embed_dir) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert storage.is_committed(embed_dir), "the embed stage never committed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not storage.is_committed(config.output)  # the killed run looks incomplete
    summary = compress(config)
    assert summary["stages"]["embed"]["reused"] is True
    assert storage.is_committed(config.output)


def test_parquet_input_end_to_end(ray_session, tmp_path):
    """Image bytes + string labels in Parquet (a Hugging Face style export), one bad row among them."""
    import pyarrow as pa

    folder = write_image_folder(tmp_path / "images", classes=2, per_class=10, size=32)
    files = sorted(folder.rglob("*.*"))
    images = [p.read_bytes() for p in files] + [b"garbage"]
    labels = [p.parent.name for p in files] + ["class_0"]
    pq.write_table(pa.table({"image": images, "label": labels}), tmp_path / "train.parquet")
    config = tiny_config(tmp_path, str(tmp_path / "train.parquet"), num_bins=2)
    summary = compress(config)
    manifest = manifest_of(config)
    assert manifest.num_rows == 21 and summary["counts"]["rejected"] == 1
    assert manifest["path"][0].as_py().endswith("train.parquet#0")
    assert summary["counts"]["kept"] == budget(20, config.rho)


def test_unlabeled_folder_is_one_class(ray_session, tmp_path):
    folder = write_image_folder(tmp_path / "images", classes=2, per_class=10, size=32)
    config = tiny_config(tmp_path, str(folder), labeled=False, num_bins=3)
    summary = compress(config)
    manifest = manifest_of(config)
    assert set(manifest["label"].to_pylist()) == {0}
    assert sorted(set(manifest["bin"].to_pylist())) == [0, 1, 2]
    assert summary["counts"]["kept"] == budget(20, config.rho)


def test_class_smaller_than_num_bins_is_named(ray_session, tmp_path):
    folder = write_image_folder(tmp_path / "images", classes=2, per_class=6, size=32)
    with pytest.raises(ValueError, match=r"'class_0' \(6\), 'class_1' \(6\); lower num_bins"):
        compress(tiny_config(tmp_path, str(folder), num_bins=8))
