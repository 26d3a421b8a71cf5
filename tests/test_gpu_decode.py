"""decode_device="cuda": plain JPEGs decoded in the embed actor, checked against the Pillow path.

On CPU the actor's code path is the same with torchvision's libjpeg decoder in place of nvJPEG: the
pixels, the embeddings of the trained CIFAR ResNet-20 and the accounting of bad input (status, reason,
note of every row) must match the CPU decode. With CUDA visible, the last tests run real nvJPEG.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from ray.data.block import BlockAccessor
from test_pipeline import TINY
from util import CIFAR_TAR, SHARED, write_image_folder

from adq_ray.config import Config
from adq_ray.embed.actor import Embedder, decode_jpegs
from adq_ray.ingest import list_inputs, read_images
from adq_ray.ingest.decode import decode_image
from adq_ray.ingest.read import to_rows
from adq_ray.pipeline import Layout, compress
from adq_ray.tables import read_parquet, to_matrix

RESNET20 = SHARED / "weights" / "resnet20-12fca82f.th"
SIZE = 32
LIMITS = {"size": SIZE, "max_pixels": 10**6, "max_bytes": 10**6}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")


def _encode(im: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **kwargs)
    return out.getvalue()


def _pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A smooth gradient with noise: a photo-like JPEG, where random noise would be all high frequency."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 120, shape[1]).reshape(1, -1, *[1] * (len(shape) - 2))
    return np.clip(rng.normal(90, 30, shape) + ramp, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def cifar() -> list[bytes]:
    """The first 32 CIFAR-10 training JPEGs of the shared tarball (32x32, as stored)."""
    if not CIFAR_TAR.exists():
        pytest.skip("shared CIFAR-10 tarball not present")
    blobs: list[bytes] = []
    with tarfile.open(CIFAR_TAR, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and member.name.removeprefix("./").startswith("train/") and len(blobs) < 32:
                blobs.append(tar.extractfile(member).read())
    return blobs


def _jpeg_kinds(cifar: list[bytes]) -> list[bytes]:
    """Plain JPEGs of every size relation and layout: as stored, enlarged (so shrunk again), small, gray, progressive, 4:4:4."""
    first = Image.open(io.BytesIO(cifar[0]))
    return [
        *cifar[:8],
        *(
            _encode(Image.open(io.BytesIO(b)).resize((96, 72), Image.Resampling.BICUBIC), quality=90)
            for b in cifar[8:16]
        ),
        _encode(Image.fromarray(_pixels((20, 24, 3)))),
        _encode(first.convert("L")),
        _encode(first.resize((64, 64)), progressive=True),
        _encode(first.resize((64, 48)), subsampling=0),
    ]


def _bad_and_odd() -> dict[str, bytes]:
    """Inputs that must be accounted for exactly as the CPU path does; only the last two reach the actor as bytes."""
    good = _encode(Image.fromarray(_pixels((48, 40, 3))), quality=90)
    huffman = good.find(b"\xff\xc4")
    corrupt = good[: huffman + 5] + b"\xff" * 20 + good[huffman + 25 :]  # header intact, Huffman table broken
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "truncated jpeg": good[: len(good) // 2],
        "cmyk jpeg": _encode(Image.fromarray(_pixels((40, 40, 3))).convert("CMYK")),
        "png": _encode(Image.fromarray(_pixels((40, 40, 3))), "PNG"),
        "rotated jpeg": _encode(Image.fromarray(_pixels((20, 48, 3))), exif=exif),
        "empty": b"",
        "not an image": b"hello",
        "too many pixels": _encode(Image.fromarray(_pixels((1001, 1000, 3)))),
        "good jpeg": good,
        "corrupt jpeg": corrupt,
    }


def _batch(blobs: list[bytes], defer_jpeg: bool) -> dict[str, np.ndarray]:
    """The numpy batch an Embedder receives from `read_images` (Ray's own Arrow -> numpy conversion)."""
    results = [decode_image(blob, **LIMITS, defer_jpeg=defer_jpeg) for blob in blobs]
    table = to_rows(np.arange(len(blobs)), np.zeros(len(blobs), np.int64), results, SIZE, defer_jpeg)
    return BlockAccessor.for_block(table).to_batch_format("numpy")


def _embedder(device: str = "cpu", precision: str = "auto") -> Embedder:
    config = Config(
        input="unused",
        output="unused",
        image_size=SIZE,
        backbone="cifar_resnet20",
        backbone_weights=str(RESNET20),
        max_image_pixels=LIMITS["max_pixels"],
        max_file_bytes=LIMITS["max_bytes"],
        device=device,
        precision=precision,
    )
    return Embedder(config, num_classes=10)


def _assert_close_to_pillow(blobs: list[bytes], device: torch.device, mean: float) -> None:
    """Each image within a mean absolute difference of `mean` levels of Pillow's decode + resize (all: half that)."""
    images = decode_jpegs(blobs, SIZE, device)
    diffs = []
    for blob, image in zip(blobs, images):
        expected = decode_image(blob, **LIMITS).image.astype(np.int16)
        diffs.append(np.abs(image.permute(1, 2, 0).cpu().numpy().astype(np.int16) - expected).mean())
        assert image.dtype == torch.uint8 and image.device.type == device.type
    assert max(diffs) < mean and np.mean(diffs) < mean / 2, diffs


def _assert_same_rows(got, want, cosine: float) -> None:
    """Same accounting row by row; embeddings and view vectors within `cosine` of the Pillow path's."""
    for name in ("sample_id", "status", "reason", "note"):
        assert got[name].to_pylist() == want[name].to_pylist(), name
    ok = np.asarray(want["status"].to_pylist()) == "ok"
    for name in ("embedding", "view_sum"):
        a, b = (torch.from_numpy(to_matrix(t[name])[ok]).double() for t in (got, want))
        assert F.cosine_similarity(a, b, dim=1).min() > cosine, name
    np.testing.assert_allclose(got["texture"].to_numpy()[ok], want["texture"].to_numpy()[ok], rtol=0.05, atol=1e-3)


def test_only_plain_jpegs_are_deferred() -> None:
    """The header check: plain RGB/gray JPEGs go on as bytes (with the note Pillow would give); all else decodes here."""
    kinds = _bad_and_odd()
    deferred = {name for name, blob in kinds.items() if decode_image(blob, **LIMITS, defer_jpeg=True).data}
    assert deferred == {"good jpeg", "corrupt jpeg"}
    for name, blob in kinds.items():
        now, cpu = decode_image(blob, **LIMITS, defer_jpeg=True), decode_image(blob, **LIMITS)
        if name not in deferred:
            assert (now.ok, now.reason, now.note) == (cpu.ok, cpu.reason, cpu.note), name
    gray = decode_image(_encode(Image.fromarray(_pixels((40, 40)))), **LIMITS, defer_jpeg=True)
    assert gray.ok and gray.image is None and gray.note == "grayscale"


def test_decoded_jpegs_match_pillow(cifar) -> None:
    _assert_close_to_pillow(_jpeg_kinds(cifar), torch.device("cpu"), mean=0.5)  # the same libjpeg: resize rounding only


def test_failed_batch_is_retried_one_by_one() -> None:
    kinds = _bad_and_odd()
    images = decode_jpegs([kinds["good jpeg"], kinds["corrupt jpeg"], kinds["good jpeg"]], SIZE, torch.device("cpu"))
    assert images[1] is None and torch.equal(images[0], images[2])


@pytest.mark.skipif(not RESNET20.exists(), reason="shared ResNet-20 weights not present")
def test_embedder_matches_the_pillow_path(cifar) -> None:
    """Real CIFAR images, bad inputs among them: the same rows, embeddings within cosine 0.99."""
    blobs = [*_jpeg_kinds(cifar), *_bad_and_odd().values()]
    embedder = _embedder()
    deferred, pillow = _batch(blobs, defer_jpeg=True), _batch(blobs, defer_jpeg=False)
    assert sum(len(b) > 0 for b in deferred["bytes"]) == len(blobs) - 7
    _assert_same_rows(embedder(deferred), embedder(pillow), cosine=0.99)


def test_read_images_defers_plain_jpegs_and_keeps_every_row(ray_session, tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", classes=2, per_class=6, size=40)
    for name, blob in _bad_and_odd().items():
        (root / "class_0" / f"{name.replace(' ', '_')}.jpg").write_bytes(blob)
    (root / "stray.jpg").write_bytes(_bad_and_odd()["good jpeg"])  # unlabeled: rejected unread
    config = Config(input=str(root), output="unused", image_size=SIZE, max_image_pixels=LIMITS["max_pixels"])
    inventory = list_inputs(config)
    cpu_mode = read_images(config, inventory)
    assert "bytes" not in cpu_mode.schema().names
    want = {r["sample_id"]: r for r in cpu_mode.take_all()}
    rows = {r["sample_id"]: r for r in read_images(config, inventory, defer_jpeg=True).take_all()}
    assert sorted(rows) == sorted(want) == inventory.table["sample_id"].to_pylist()
    for i, path, label in zip(*inventory.table.select(["sample_id", "path", "label"]).to_pydict().values()):
        row, data = rows[i], Path(path).read_bytes()
        plain = label >= 0 and bool(decode_image(data, **LIMITS, defer_jpeg=True).data)
        assert row["bytes"] == (data if plain else b""), path
        if plain:  # "ok" until the actor decodes it (the corrupt JPEG is rejected there)
            assert (row["status"], row["reason"], row["note"]) == ("ok", "", "") and not row["image"].any()
        else:
            assert (row["status"], row["reason"], row["note"]) == (
                want[i]["status"],
                want[i]["reason"],
                want[i]["note"],
            )
            np.testing.assert_array_equal(row["image"], want[i]["image"])
    assert sum(bool(r["bytes"]) for r in rows.values()) == 2 * 4 + 2  # 4 of 6 generated files are JPEGs


def test_pipeline_with_decode_device_cuda_accounts_like_cpu(ray_session, tmp_path: Path) -> None:
    """End to end on CPU with the deferred path: every input in the manifest, as the CPU decode accounts for it."""
    root = write_image_folder(tmp_path / "images", classes=2, per_class=10, size=40)
    for name, blob in _bad_and_odd().items():
        (root / "class_1" / f"{name.replace(' ', '_')}.jpg").write_bytes(blob)
    config = Config(
        input=str(root), output=str(tmp_path / "out"), **{**TINY, "num_bins": 2}, decode_device="cuda",
        max_image_pixels=LIMITS["max_pixels"],
    )  # fmt: skip
    summary = compress(config)
    manifest = read_parquet(Layout(config).manifest)
    inventory = list_inputs(config)
    want = {r["sample_id"]: r for r in read_images(config, inventory).take_all()}
    assert manifest.num_rows == len(want) == summary["counts"]["inputs"] == 29
    for row in manifest.to_pylist():
        expected = want[row["sample_id"]]
        assert (row["status"] == "rejected") == (expected["status"] == "rejected"), row
        assert (row["reason"], row["note"]) == (expected["reason"], expected["note"]), row
    assert pc.sum(pc.equal(manifest["status"], "rejected")).as_py() == 5
    assert Layout(config).stage("embed") != Layout(config.replace(decode_device="cpu")).stage("embed")


@CUDA
def test_nvjpeg_matches_pillow(cifar) -> None:
    """nvJPEG's IDCT and chroma upsampling differ from libjpeg's: up to 2.6 levels on 32 px CIFAR JPEGs (H100)."""
    _assert_close_to_pillow(_jpeg_kinds(cifar), torch.device("cuda"), mean=3.0)
    kinds = _bad_and_odd()
    images = decode_jpegs([kinds["good jpeg"], kinds["corrupt jpeg"]], SIZE, torch.device("cuda"))
    assert images[0] is not None and images[1] is None


@CUDA
@pytest.mark.skipif(not RESNET20.exists(), reason="shared ResNet-20 weights not present")
def test_nvjpeg_embedder_matches_the_pillow_path(cifar) -> None:
    """fp32 on the GPU, so that only the decoder differs: cosine 0.988 at worst, 0.998 on average (H100)."""
    blobs = [*_jpeg_kinds(cifar), *_bad_and_odd().values()]
    got = _embedder("cuda", precision="fp32")(_batch(blobs, defer_jpeg=True))
    _assert_same_rows(got, _embedder("cpu")(_batch(blobs, defer_jpeg=False)), cosine=0.98)
