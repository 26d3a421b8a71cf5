"""HTML report: every section present, every referenced PNG written and valid, nothing fetched online."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from util import make_bucket

from adq_ray import storage
from adq_ray.write.report import overlay, tile, write_report

SECTIONS = ("summary", "bins", "quotas", "samples", "overlays", "evaluation")


def report_inputs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    sizes = [30, 25, 25, 20]
    bin_table = [
        {
            "bin": b,
            "size": n,
            "rep": 0.1 + 0.02 * b,
            "div": 2.0 - 0.3 * b,
            "importance": 0.25,
            "share": 0.2 + 0.05 * b,
            "quota": n // 5,
            "selected": n // 5,
        }
        for b, n in enumerate(sizes)
    ]
    images = lambda k, size: [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(k)]  # noqa: E731
    masks = [rng.random((14, 14)) < 0.8 for _ in range(3)]
    return {
        "summary": {
            "counts": {
                "inputs": 103,
                "kept": 20,
                "not_selected": 80,
                "rejected": 3,
                "rejected_by_reason": {"corrupt": 2, "too_large": 1},
            },
            "sample_ratio": 0.2,
            "patch_keep_ratio": 156 / 196,
            "storage_ratio": 0.0731,
            "sampler": "adq",
            "stages": {"embed": {"reused": False, "seconds": 1.5}},
        },
        "bin_table": bin_table,
        "samples_per_bin": {0: images(6, 32), 1: images(12, 32), 2: [], 3: images(2, 224)},
        "overlays": list(zip(images(3, 224), masks)),
        "eval_rows": [
            {
                "arm": "full",
                "n_train": 100,
                "sample_ratio": 1.0,
                "storage_ratio": 1.0,
                "final_acc": 0.8,
                "best_acc": 0.82,
            },
            {
                "arm": "adq@0.2",
                "n_train": 20,
                "sample_ratio": 0.2,
                "storage_ratio": 0.07,
                "final_acc": 0.5,
                "best_acc": 0.55,
                "method": "adq",
            },
        ],
    }


def image_sources(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]+)"', page)


def test_report_has_every_section_and_valid_local_images(tmp_path):
    inputs = report_inputs()
    uri = write_report(str(tmp_path / "report"), **inputs)
    assert uri == str(tmp_path / "report" / "report.html")
    page = Path(uri).read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    assert not re.search(r"https?:|//[a-z]|<script|<link", page, re.IGNORECASE), "the report must open offline"
    sources = image_sources(page)
    expected = {
        "bin_sizes.png",
        "bin_scores.png",
        "quotas.png",
        "samples_bin0.png",
        "samples_bin1.png",
        "samples_bin3.png",
        "overlays.png",
        "accuracy.png",
    }
    assert set(sources) == expected
    for name in sources:
        with Image.open(tmp_path / "report" / name) as image:
            image.verify()
            assert image.format == "PNG"
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(expected | {"report.html"})
    # summary values, nested counts by reason, the bin table and the evaluation table are all shown
    for text in ("corrupt", "too_large", "rejected_by_reason", "79.59%", "7.31%", "adq@0.2", "embed"):
        assert text in page, text
    assert page.count("<tr>") >= 1 + len(inputs["bin_table"]) + 1 + len(inputs["eval_rows"])
    assert "No samples." in page  # bin 2 is empty
    with Image.open(tmp_path / "report" / "samples_bin1.png") as grid:
        assert grid.size == (10 * 64 + 9 * 2, 2 * 64 + 2)  # 12 images, 10 per row, 2 px gaps
    with Image.open(tmp_path / "report" / "overlays.png") as grid:
        assert grid.size == (6 * 160 + 5 * 2, 160)  # 3 (input, overlay) pairs


def test_report_without_evaluation_on_s3(s3_server):
    bucket = make_bucket("reports")
    inputs = {**report_inputs(1), "eval_rows": None, "overlays": []}
    uri = write_report(f"{bucket}/run/report", **inputs)
    assert uri == f"{bucket}/run/report/report.html"
    page = storage.read_bytes(uri).decode()
    assert "No evaluation was run." in page and "No stored images to show." in page
    assert "accuracy.png" not in page and "overlays.png" not in page
    for name in image_sources(page):
        assert Image.open(io.BytesIO(storage.read_bytes(f"{bucket}/run/report/{name}"))).format == "PNG"


def test_overlay_darkens_and_hatches_only_dropped_patches():
    image = np.full((32, 32, 3), 200, np.uint8)
    keep = np.ones((4, 4), bool)
    keep[1, 2] = False  # rows 8-15, columns 16-23
    out = overlay(image, keep)
    dropped = np.zeros((32, 32), bool)
    dropped[8:16, 16:24] = True
    assert (out[~dropped] == 200).all(), "kept patches are unchanged"
    patch = out[dropped]
    assert (patch[:, 0] == 70).sum() > 0 and (patch[:, 0] == 210).sum() > 0  # darkened and hatched
    assert (patch[:, 0] < 200).mean() > 0.5
    assert np.array_equal(overlay(image, np.ones((4, 4), bool)), image)


def test_tile_lays_out_rows_and_resizes():
    images = [np.full((8, 8, 3), v, np.uint8) for v in (0, 100, 200)]
    sheet = tile(images, cell=16, columns=2, gap=2)
    assert sheet.shape == (34, 34, 3)
    assert (sheet[:16, :16] == 0).all() and (sheet[:16, 18:] == 100).all() and (sheet[18:, :16] == 200).all()
    assert (sheet[18:, 18:] == 255).all() and (sheet[16:18] == 255).all()  # empty cell and gaps stay white


def test_report_renders_in_headless_chromium(tmp_path):
    browser = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    if browser is None:
        pytest.skip("no chromium on this machine")
    uri = write_report(str(tmp_path / "report"), **report_inputs())
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            f"--screenshot={shot}",
            "--window-size=1200,3000",
            f"file://{uri}",
        ],
        check=True,
        timeout=60,
        capture_output=True,
    )
    with Image.open(shot) as image:
        assert np.asarray(image.convert("L")).std() > 10, "the page rendered blank"
