"""Patch strips (png/raw bit-exact, jpeg close), dropper rows through Parquet, assembling images."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from adq_ray.config import Config
from adq_ray.models import normalize
from adq_ray.patches.codec import dataset_schema, decode_patches, encode_patches
from adq_ray.patches.dropper import PatchDropper
from adq_ray.patches.grid import patchify
from adq_ray.patches.reconstruct import assemble, decode_rows, fill_mean, restore

torch.set_num_threads(1)


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, size, size, 3): smooth colour gradients plus mild noise (JPEG-friendly, not constant)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = (
        rng.uniform(40, 200, (n, 1, 1, 3))
        + 50 * np.sin(6 * yy + rng.uniform(0, 3, (n, 1, 1)))[..., None] * xx[..., None]
    )
    return np.clip(base + rng.normal(0, 3, (n, size, size, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("p", [8, 16])
@pytest.mark.parametrize("codec", ["png", "raw"])
def test_lossless_codecs_round_trip_bit_exact(codec: str, p: int) -> None:
    patches = np.random.default_rng(p).integers(0, 256, (5, p, p, 3), dtype=np.uint8)
    data = encode_patches(patches, codec)
    decoded = decode_patches(data, codec, p)
    assert decoded.dtype == np.uint8 and decoded.flags.writeable
    np.testing.assert_array_equal(decoded, patches)
    if codec == "raw":
        assert len(data) == patches.size
        np.testing.assert_array_equal(np.frombuffer(data, np.uint8).reshape(p, 5 * p, 3)[:, p : 2 * p], patches[1])


@pytest.mark.parametrize("p", [8, 16])
def test_jpeg_round_trip_within_tolerance(p: int) -> None:
    image = smooth_images(1, 4 * p)[0]
    patches = patchify(torch.from_numpy(image).permute(2, 0, 1)[None], p)[0].permute(0, 2, 3, 1).numpy()
    data = encode_patches(patches, "jpeg", quality=90)
    decoded = decode_patches(data, "jpeg", p)
    assert decoded.shape == patches.shape
    assert np.abs(decoded.astype(int) - patches).mean() < 3.0
    assert len(data) < len(encode_patches(patches, "png"))


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        encode_patches(np.zeros((1, 4, 4, 3), np.uint8), "webp")
    with pytest.raises(ValueError, match="uint8"):
        encode_patches(np.zeros((1, 4, 4, 3), np.float32), "png")
    with pytest.raises(ValueError, match="whole number"):
        decode_patches(b"\0" * 47, "raw", 4)


def source_patches(images: np.ndarray, p: int) -> np.ndarray:
    """(B, L, p, p, 3) patches of (B, S, S, 3) images, by plain slicing."""
    b, s = images.shape[:2]
    g = s // p
    tiles = [
        [images[i, r * p : (r + 1) * p, c * p : (c + 1) * p] for r in range(g) for c in range(g)] for i in range(b)
    ]
    return np.stack(tiles)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return smooth_images(6, 32, seed=3)


@pytest.mark.parametrize("codec", ["png", "raw", "jpeg"])
def test_dropper_rows_through_parquet(tmp_path, images: np.ndarray, codec: str) -> None:
    # A CIFAR ResNet-20 at its last stage ("layer3", 8x8 maps) on 32 px images in 8 px patches.
    config = Config(
        input="unused",
        output="unused",
        patch_image_size=32,
        patch_size=8,
        mask_ratio=0.3,
        codec=codec,
        cam_model="cifar_resnet20",
        cam_weights="random",
        cam_layer="layer3",
        device="cpu",
    )
    k = config.kept_patches
    assert k == 11  # floor(16 * 0.7)
    batch = {"sample_id": np.arange(10, 16, dtype=np.int64), "label": np.array([0, 1, 2, 0, 1, 2]), "image": images}
    table = PatchDropper(config)(batch)
    assert table.schema == dataset_schema(k)
    pq.write_table(table, tmp_path / "part-0.parquet")
    back = pq.read_table(tmp_path / "part-0.parquet")
    assert back.schema == dataset_schema(k)
    assert back["sample_id"].to_pylist() == list(range(10, 16)) and back["label"].to_pylist() == [0, 1, 2, 0, 1, 2]
    assert set(back["codec"].to_pylist()) == {codec}
    assert set(back["patch_size"].to_pylist()) == {8} and set(back["image_size"].to_pylist()) == {32}

    kept_idx = np.array(back["kept_idx"].to_pylist())
    assert kept_idx.shape == (6, k) and (np.diff(kept_idx, axis=1) > 0).all() and kept_idx.max() < 16

    expected = source_patches(images, 8)
    for row, (idx, data) in enumerate(zip(kept_idx, back["patches"].to_pylist())):
        decoded = decode_patches(data, codec, 8)
        if codec == "jpeg":
            assert np.abs(decoded.astype(int) - expected[row, idx]).mean() < 4.0
        else:
            np.testing.assert_array_equal(decoded, expected[row, idx])
    sizes = np.array([len(d) for d in back["patches"].to_pylist()])
    np.testing.assert_array_equal(back["nbytes"].to_numpy(), sizes + 2 * k)
    raw = k * 8 * 8 * 3
    print(
        f"\n{codec}: {sizes.mean():.0f} B per image for {k} kept 8x8 patches ({raw} B raw, {32 * 32 * 3} B full image)"
    )


def test_dropper_keeps_the_highest_cam_patches(images: np.ndarray) -> None:
    config = Config(
        input="unused", output="unused", patch_image_size=64, mask_ratio=0.5, cam_weights="random", device="cpu"
    )
    dropper = PatchDropper(config)
    big = np.stack([np.kron(im, np.ones((2, 2, 1), np.uint8)) for im in images[:3]])  # 64 px
    table = dropper({"sample_id": np.arange(3), "label": np.zeros(3, np.int64), "image": big})
    scores = dropper.cam(normalize(torch.from_numpy(big).permute(0, 3, 1, 2)), 4).flatten(1)
    for row, idx in zip(scores.tolist(), table["kept_idx"].to_pylist()):
        assert idx == sorted(sorted(range(16), key=lambda i: (-row[i], i))[:8])
    with pytest.raises(ValueError, match="expected uint8 images"):
        dropper({"sample_id": np.arange(3), "label": np.zeros(3), "image": images[:3]})
    assert (
        dropper({"sample_id": np.zeros(0), "label": np.zeros(0), "image": np.zeros((0, 64, 64, 3), np.uint8)}).num_rows
        == 0
    )


def test_assemble_and_fill(images: np.ndarray) -> None:
    x = torch.from_numpy(images[:2]).permute(0, 3, 1, 2)
    kept_idx = torch.tensor([[0, 5, 6, 15], [1, 2, 3, 4]])
    patches = patchify(x, 8)[torch.arange(2)[:, None], kept_idx]
    assembled, keep = assemble(kept_idx, patches, 4)
    assert keep.sum(1).tolist() == [4, 4]
    for b in range(2):
        for i in range(16):
            r, c = divmod(i, 4)
            tile = assembled[b, :, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8]
            expected = x[b, :, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8] if i in kept_idx[b] else torch.zeros_like(tile)
            assert torch.equal(tile, expected)
    filled = fill_mean(assembled, keep)
    for b in range(2):
        tiles = [patchify(x[b : b + 1], 8)[0, i].reshape(3, -1) for i in kept_idx[b].tolist()]
        mean = torch.cat(tiles, 1).double().mean(1).round().to(torch.uint8)
        tile = mean.view(3, 1, 1).expand(3, 8, 8)
        assert torch.equal(filled[b, :, 24:, :8], tile)  # patch 12: dropped in both rows
        patch5 = x[b, :, 8:16, 8:16] if b == 0 else tile  # patch 5: kept in row 0 only
        assert torch.equal(filled[b, :, 8:16, 8:16], patch5)
    assert torch.equal(restore(assembled, keep, fill="zero"), assembled)
    with pytest.raises(ValueError):
        restore(assembled, keep, fill="noise")


def test_decode_rows_rebuilds_kept_pixels(images: np.ndarray) -> None:
    config = Config(
        input="unused",
        output="unused",
        patch_image_size=32,
        patch_size=8,
        codec="png",
        cam_model="cifar_resnet20",
        cam_weights="random",
        cam_layer="layer3",
        device="cpu",
    )
    table = PatchDropper(config)({"sample_id": np.arange(6), "label": np.zeros(6, np.int64), "image": images})
    assembled, keep = decode_rows(table)
    assert assembled.shape == (6, 3, 32, 32) and keep.sum(1).tolist() == [config.kept_patches] * 6
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    pixels = keep.reshape(6, 1, 4, 4).repeat_interleave(8, 2).repeat_interleave(8, 3).expand_as(x)
    assert torch.equal(assembled[pixels], x[pixels]) and (assembled[~pixels] == 0).all()
