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

SECTIONS = ("summary", "classes", "bins", "quotas", "samples", "overlays", "evaluation", "details")
OUTPUT = "/data/runs/cifar-r20"


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
            "target_rho": 0.2,
            "sample_ratio": 0.2,
            "patch_keep_ratio": 156 / 196,
            "kept_patches": 156,
            "patches_per_image": 196,
            "data_keep_ratio": 0.2 * 156 / 196,
            "source_bytes": 2_500_000,
            "stored_bytes": 182_750,
            "storage_ratio": 0.0731,
            "sampler": "adq",
            "output": OUTPUT,
            "stages": {  # sorted by name, as in summary.json
                "bins": {"reused": True, "seconds": 0.0, "path": f"{OUTPUT}/_stages/bins-4567"},
                "embed": {"reused": False, "seconds": 1.5, "path": f"{OUTPUT}/_stages/embed-0123"},
                "write": {"reused": False, "seconds": 0.25},
            },
        },
        "classes": [
            {"class": "cat", "inputs": 50, "kept": 12, "rejected": 1},
            {"class": "dog", "inputs": 50, "kept": 8, "rejected": 2},
        ],
        "sample_classes": {0: ["cat"] * 4 + ["dog"] * 2, 1: ["dog"] * 12, 3: ["cat", "dog"]},
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
    assert not re.search(r"https?:|//[a-z]|<script[^>]*src|<link", page, re.IGNORECASE), "the report must open offline"
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
    for text in ("corrupt", "too_large", "rejected_by_reason", "79.59%", "7.31%", "adq@0.2", "embed", "cat"):
        assert text in page, text
    assert page.count("<tr>") >= 1 + len(inputs["bin_table"]) + 1 + len(inputs["eval_rows"])
    assert "No samples." in page  # bin 2 is empty
    with Image.open(tmp_path / "report" / "samples_bin1.png") as grid:
        assert grid.size == (10 * 64 + 9 * 2, 2 * (64 + 13) + 2)  # 12 images, 10 per row, a label band, 2 px gaps
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


def card(page: str) -> str:
    return page[page.index('<div class="card">') : page.index("</div>", page.index('<div class="card">'))]


def test_summary_card_comes_first_and_explains_each_ratio_with_its_bytes(tmp_path):
    page = Path(write_report(str(tmp_path / "report"), **report_inputs())).read_text()
    assert page.index('<section id="summary">') < min(page.index(f'<section id="{s}">') for s in SECTIONS[1:])
    text = re.sub(r"<[^>]+>", " ", card(page))
    for line in (
        "Inputs   103  files, 2.5 MB",
        "Kept   20   selected and stored (182.8 kB)",
        "Not selected  80",
        "by reason: corrupt 2, too_large 1",
        "Sample ratio   20.00%   kept / readable inputs = 20 / 100 (target rho 0.2)",
        "Patch keep ratio   79.59%   156 of 196 patches per image",
        "Data keep ratio   15.92%   sample ratio x patch keep ratio",
        "Storage ratio   7.31%   stored bytes / source bytes = 182.8 kB / 2.5 MB",
        "embed 1.5 s &middot; bins re-used &middot; write 0.2 s &middot; total 1.8 s",
        "Fewest kept: dog 8, cat 12",
    ):
        assert re.sub(r"\s+", " ", line) in re.sub(r"\s+", " ", text), line
    # paths relative to the output, no Python literals anywhere on the page
    assert OUTPUT not in page and "_stages/embed-0123" in page and "cifar-r20" in page
    assert not re.search(r">\s*(True|False|None)\s*<|\{'|\['", page)


def test_a_thousand_classes_stay_readable(tmp_path):
    inputs = report_inputs()
    inputs["classes"] = [
        {"class": f"n{c:08d}", "inputs": 1300, "kept": 100 + c % 57, "rejected": 0} for c in range(1000)
    ]
    page = Path(write_report(str(tmp_path / "report"), **inputs)).read_text()
    text = re.sub(r"<[^>]+>", " ", card(page))
    assert "1,000 classes" in text
    assert "Fewest kept: n00000000 100, n00000057 100" in text  # top-N in the card, not 1,000 names
    assert len(re.findall(r"n\d{8}", text)) == 20
    assert page.count('<tr data-name="n') == 1000 and 'id="class-search"' in page and 'class="scroll"' in page


def chromium() -> str:
    browser = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    if browser is None:
        pytest.skip("no chromium on this machine (scripts/test.sh installs it with apt-get when run as root)")
    return browser


def headless(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-dev-shm-usage"]
    return subprocess.run([chromium(), *flags, *args], check=True, timeout=120, capture_output=True, text=True)


def test_report_renders_in_headless_chromium(tmp_path):
    uri = write_report(str(tmp_path / "report"), **report_inputs())
    shot = tmp_path / "shot.png"
    headless(f"--screenshot={shot}", "--window-size=1200,3000", f"file://{uri}")
    with Image.open(shot) as image:
        assert np.asarray(image.convert("L")).std() > 10, "the page rendered blank"


def test_class_search_filters_in_headless_chromium(tmp_path):
    """The inline script runs in a real browser, offline: `#class=n0000001` keeps the 10 matching rows of 1,000."""
    inputs = report_inputs()
    inputs["classes"] = [{"class": f"n{c:08d}", "inputs": 10, "kept": 1, "rejected": 0} for c in range(1000)]
    uri = write_report(str(tmp_path / "report"), **inputs)
    dom = headless("--virtual-time-budget=5000", "--dump-dom", f"file://{uri}#class=n0000001").stdout
    rows = re.findall(r'<tr data-name="(n\d{8})"( hidden="")?', dom)
    assert len(rows) == 1000
    assert sorted(name for name, hidden in rows if not hidden) == [f"n{c:08d}" for c in range(10, 20)]
    assert "10 of 1000 classes" in dom
