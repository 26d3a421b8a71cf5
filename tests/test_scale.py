"""benchmarks/scale.py at a tiny size: the faked stages run through the real bins, select and manifest code."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import scale  # noqa: E402

from adq_ray.config import Config  # noqa: E402
from adq_ray.layout import Layout  # noqa: E402
from adq_ray.quotas import budget, select  # noqa: E402
from adq_ray.tables import to_matrix  # noqa: E402


def test_scale_benchmark_tiny_end_to_end(tmp_path, ray_session):
    work = tmp_path / "scale"
    result = scale.main(["--samples", "2400", "--classes", "7", "--dim", "12", "--workdir", str(work), "--keep"])
    assert [r["stage"] for r in result["rows"]] == ["bins", "select", "manifest + summary"]
    counts = result["summary"]["counts"]
    manifest = pq.read_table(work / "out" / "manifest.parquet")
    assert counts["inputs"] == manifest.num_rows == 2400
    valid = counts["kept"] + counts["not_selected"]
    assert counts["kept"] == budget(valid, 0.1) and valid + counts["rejected"] == 2400
    assert manifest["sample_id"].to_pylist() == list(range(2400))

    # The driver's selection (from per-cell sums) is the one the per-sample vectors give.
    config = scale.config_for(work, scale.parse(["--workdir", str(work)]))
    layout = Layout(config, scale.LISTING)
    emb = pq.read_table(layout.embeddings, filters=[("status", "=", "ok")]).sort_by("sample_id")
    bins = pq.read_table(layout.bins).sort_by("sample_id")
    assert bins["sample_id"].equals(emb["sample_id"])
    expected = select(
        torch.from_numpy(bins["bin"].to_numpy().copy()),
        torch.from_numpy(bins["label"].to_numpy().copy()),
        torch.from_numpy(emb["texture"].to_numpy().copy()),
        torch.from_numpy(to_matrix(emb["view_sum"])),
        num_bins=10,
        rho=0.1,
        alpha=config.alpha,
        seed=0,
    )
    chosen = np.asarray(bins["sample_id"])[expected.selected.numpy()]
    np.testing.assert_array_equal(np.sort(layout.selected_ids()), chosen)


def test_scale_benchmark_driver_only_tiny(tmp_path, ray_session):
    work = tmp_path / "scale-driver"
    result = scale.main(["--samples", "3000", "--classes", "40", "--dim", "8", "--driver-only", "--workdir", str(work)])
    assert [r["stage"] for r in result["rows"]] == ["select", "manifest + summary"]
    counts = result["summary"]["counts"]
    assert counts["inputs"] == 3000 and counts["kept"] == budget(counts["kept"] + counts["not_selected"], 0.1)
    assert not work.exists(), "the faked stages are removed without --keep"


def test_batch_size_auto_from_gpu_memory(monkeypatch, tmp_path):
    from adq_ray import resources

    base = Config(input=str(tmp_path), output=str(tmp_path / "out"), device="cpu")
    assert base.batch_size == 0 and resources.batch_size(base, "embed") == 64
    assert resources.batch_size(base.replace(batch_size=48), "patches") == 48
    monkeypatch.setattr(resources, "gpus", lambda config: 1)
    monkeypatch.setattr(resources, "gpu_memory", lambda: 80 * 2**30)
    gpu = base.replace(device="cuda")
    assert (resources.batch_size(gpu, "embed"), resources.batch_size(gpu, "patches")) == (1024, 512)
    assert resources.batch_size(gpu.replace(image_size=448), "embed") == 256  # 4x the pixels: a quarter
    monkeypatch.setattr(resources, "gpu_memory", lambda: 8 * 2**30)
    assert resources.batch_size(gpu, "patches") == 64  # never below 64
    assert resources.batch_size(gpu.replace(batch_size=100), "embed") == 100  # an explicit size wins
