"""Sources smaller than the patch image are stored at their own resolution: never more pixels than the source,
lossless codecs bit-exact against the decoded source, the same reconstruction at patch_image_size as the
strip layout, and a JPEG source's kept image not dearer than its own bytes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from util import CIFAR_TAR, RESNET20, needs_shared

from adq_ray.config import Config
from adq_ray.ingest import extract_cifar_subset, list_inputs
from adq_ray.ingest.decode import decode_image
from adq_ray.patches.codec import decode_source, jpeg_quality_of
from adq_ray.patches.dropper import PatchDropper, PatchSelector
from adq_ray.patches.grid import bilinear_support, expand_mask, keep_mask, source_mask
from adq_ray.patches.reconstruct import decode_rows
from adq_ray.patches.source import read_sources

torch.set_num_threads(1)
LIMIT = 10**9
SEED = 0


def config(codec: str = "jpeg", size: int = 64, **kw) -> Config:
    """A CIFAR ResNet-20 CAM on 16 px patches of a `size` px image (random weights: any ranking will do)."""
    fields = {"input": "unused", "cam_weights": "random", **kw}
    return Config(
        output="unused",
        patch_image_size=size,
        patch_size=16,
        mask_ratio=0.3,
        codec=codec,
        cam_model="cifar_resnet20",
        cam_layer="layer3",
        cam_image_size=32,
        device="cpu",
        **fields,
    )


def write(path: Path, pixels: np.ndarray, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    """Real files: PNG and JPEG, square and not, colour and grey, all under 64 x 64 pixels."""
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48]
    smooth = np.stack([128 + 60 * np.sin(yy / 7 + c) * np.cos(xx / 9) for c in range(3)], -1)
    noisy = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    return [
        write(root / "a" / "square.png", noisy[:32, :32]),
        write(root / "a" / "wide.png", noisy[:30, :40]),
        write(root / "a" / "tall.jpg", noisy[:48, :20], quality=80),
        write(root / "b" / "grey.png", noisy[:32, :32, 0]),
        write(root / "b" / "square.jpg", noisy[:32, :32], quality=60),
        write(root / "b" / "odd.jpg", noisy[:17, :23], quality=95),
    ]


def rows_for(paths: list[Path], cfg: Config) -> dict[str, np.ndarray]:
    listing = {"sample_id": np.arange(len(paths)), "label": np.zeros(len(paths), np.int64)}
    return read_sources({**listing, "path": np.array([str(p) for p in paths], dtype=object)}, cfg)


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=int(quality), subsampling="4:2:0")
    return decoded(out)


def decoded(path: Path | io.BytesIO) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


@pytest.mark.parametrize("shape", [(32, 32), (30, 40), (17, 23), (48, 20), (300, 150), (64, 64)])
def test_source_mask_holds_every_pixel_a_kept_patch_reads(shape: tuple[int, int]) -> None:
    """Changing the pixels outside `source_mask` leaves every kept pixel of Pillow's bilinear resize unchanged."""
    h, w = shape
    rng = np.random.default_rng(h * w)
    for size, grid in [(64, 4), (224, 14)]:
        keep = rng.random((3, grid * grid)) < 0.6
        masks = source_mask(keep, h, w, size)
        for k, mask in zip(keep, masks):
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            b = a.copy()
            b[~mask] = rng.integers(0, 256, (int((~mask).sum()), 3), dtype=np.uint8)
            ra, rb = (np.asarray(Image.fromarray(x).resize((size, size), Image.Resampling.BILINEAR)) for x in (a, b))
            kept = k.reshape(grid, grid).repeat(size // grid, 0).repeat(size // grid, 1)
            np.testing.assert_array_equal(ra[kept], rb[kept])
    # The window is Pillow's: 32 -> 224 reads 2 source pixels per output pixel, and every source pixel is read.
    support = bilinear_support(32, 224)
    assert support.sum(1).max() == 2 and support.any(0).all()


def test_read_sources_gives_ingests_image_and_the_source(sources: list[Path], tmp_path: Path) -> None:
    """The decode tasks ship a source that fits in S x S without its upsampled image; the CAM actor's
    `images` then holds ingest's image for every row (mixed here with a wide source the task resizes)."""
    cfg = config()
    rng = np.random.default_rng(1)
    wide = write(tmp_path / "c" / "wide.png", rng.integers(0, 256, (30, 80, 3), dtype=np.uint8))  # < 64^2 px
    paths = [*sources, wide]
    rows = rows_for(paths, cfg)
    assert list(rows["status"]) == ["ok"] * len(paths)
    assert [len(b) for b in rows["image"]] == [0] * len(sources) + [64 * 64 * 3]
    images = PatchSelector(cfg).images(rows).permute(0, 2, 3, 1).numpy()
    for i, path in enumerate(paths):
        data = path.read_bytes()
        np.testing.assert_array_equal(images[i], decode_image(data, 64, LIMIT, LIMIT).image)
    for i, path in enumerate(sources):
        src = decoded(path)
        assert (rows["source_height"][i], rows["source_width"][i]) == src.shape[:2]
        np.testing.assert_array_equal(np.frombuffer(rows["source"][i], np.uint8).reshape(src.shape), src)
        with Image.open(path) as im:
            assert rows["source_quality"][i] == (
                {"tall": 80, "square": 60, "odd": 95}[path.stem] if path.suffix == ".jpg" else 0
            )
            assert jpeg_quality_of(im) == rows["source_quality"][i]


@pytest.mark.parametrize("codec", ["png", "raw", "jpeg"])
def test_source_layout_round_trip(tmp_path, sources: list[Path], codec: str) -> None:
    cfg = config(codec)
    rows = rows_for(sources, cfg)
    torch.manual_seed(SEED)  # the random CAM weights, so the kept set does not depend on the tests run before
    table = PatchDropper(cfg)(rows)
    pq.write_table(table, tmp_path / "part.parquet")
    back = pq.read_table(tmp_path / "part.parquet")
    assert back.equals(table)
    kept = torch.tensor(back["kept_idx"].to_pylist())
    keep = keep_mask(kept, cfg.grid**2)
    images, keep_back = decode_rows(back)
    assert images.shape == (len(sources), 3, 64, 64) and torch.equal(keep_back, keep)
    pixels = expand_mask(keep, 16).expand_as(images)
    for i, path in enumerate(sources):
        src = decoded(path)
        h, w = src.shape[:2]
        assert (back["source_height"][i].as_py(), back["source_width"][i].as_py()) == (h, w)
        mask = source_mask(keep[i : i + 1].numpy(), h, w, 64)[0]
        stored = decode_source(back["patches"][i].as_py(), codec, mask)
        assert stored.shape == src.shape  # never more pixels than the source
        expected = torch.from_numpy(np.array(decode_image(path.read_bytes(), 64, LIMIT, LIMIT).image)).permute(2, 0, 1)
        if codec == "jpeg":  # the fill costs the kept pixels little against re-encoding the whole source
            quality = min(cfg.jpeg_quality, rows["source_quality"][i] or cfg.jpeg_quality)
            whole = _jpeg_round_trip(src, quality)
            error = np.abs(stored[mask].astype(int) - src[mask]).mean()
            assert error <= 1.1 * np.abs(whole[mask].astype(int) - src[mask]).mean() + 1.5
        else:  # bit-exact at the source's resolution, and at the patch size the same pixels as the strip layout
            np.testing.assert_array_equal(stored[mask], src[mask])
            assert torch.equal(images[i][pixels[i]], expected[pixels[i]])
        assert not images[i][~pixels[i]].any()
    if codec == "raw":
        expected_bytes = [3 * int(m.sum()) for m in source_mask(keep.numpy(), 32, 32, 64)[[0, 3]]]
        assert [len(back["patches"][i].as_py()) for i in (0, 3)] == expected_bytes


def test_large_sources_keep_the_strip_layout(tmp_path) -> None:
    """A source with at least S x S pixels is stored as before: kept patches of its S x S resize, in a strip."""
    rng = np.random.default_rng(1)
    paths = [
        write(tmp_path / "big.png", rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)),
        write(tmp_path / "exact.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
    ]
    cfg = config("png")
    rows = rows_for(paths, cfg)
    assert rows["source_height"].tolist() == [0, 0] and list(rows["source"]) == [b"", b""]
    dropper = PatchDropper(cfg)
    table = dropper(rows)
    assert table["source_height"].to_pylist() == [0, 0]
    old = dropper({k: rows[k] for k in ("sample_id", "label", "image")})  # no source columns: as before
    assert old.equals(table)
    images, keep = decode_rows(table)
    pixels = expand_mask(keep, 16).expand_as(images)
    for i, path in enumerate(paths):
        expected = torch.from_numpy(np.array(decode_image(path.read_bytes(), 64, LIMIT, LIMIT).image)).permute(2, 0, 1)
        assert torch.equal(images[i][pixels[i]], expected[pixels[i]])
        assert len(table["patches"][i].as_py()) == table["nbytes"][i].as_py() - 2 * cfg.kept_patches
    # A table written before the source columns existed still decodes (all strips).
    legacy = table.drop_columns(["source_height", "source_width"])
    assert torch.equal(decode_rows(legacy)[0], images)


def test_mixed_batch_decodes_each_row_in_its_layout(tmp_path, sources: list[Path]) -> None:
    big = write(tmp_path / "big.png", np.random.default_rng(2).integers(0, 256, (90, 70, 3), dtype=np.uint8))
    cfg = config("png")
    paths = [sources[0], big, sources[3]]
    table = PatchDropper(cfg)(rows_for(paths, cfg))
    assert table["source_height"].to_pylist() == [32, 0, 32]
    images, keep = decode_rows(table)
    pixels = expand_mask(keep, 16).expand_as(images)
    for i, path in enumerate(paths):
        expected = torch.from_numpy(np.array(decode_image(path.read_bytes(), 64, LIMIT, LIMIT).image)).permute(2, 0, 1)
        assert torch.equal(images[i][pixels[i]], expected[pixels[i]])


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    return extract_cifar_subset(CIFAR_TAR, tmp_path_factory.mktemp("cifar") / "train", per_class=3)


@needs_shared
def test_small_jpeg_sources_cost_no_more_than_their_kept_share(cifar: Path) -> None:
    """Default codec (jpeg, quality 90) on 32 px quality-75 CIFAR JPEGs at 224 px: each stored image is at most
    its source's bytes times the patch keep fraction (plus 5%), and is not re-encoded finer than the source."""
    cfg = Config(
        input=str(cifar),
        output="unused",
        cam_model="cifar_resnet20",
        cam_weights=str(RESNET20),
        cam_layer="layer3",
        cam_image_size=32,
        device="cpu",
        batch_size=8,
    )
    assert cfg.codec == "jpeg" and cfg.patch_image_size == 224 and cfg.jpeg_quality == 90
    inventory = list_inputs(cfg).table
    rows = rows_for([Path(p) for p in inventory["path"].to_pylist()], cfg)
    table = PatchDropper(cfg)(rows)
    source_bytes = np.array(inventory["nbytes"].to_pylist())
    stored = np.array([len(b) for b in table["patches"].to_pylist()])
    share = cfg.kept_patches / cfg.grid**2
    assert (stored <= 1.05 * share * source_bytes).all(), (stored / source_bytes).max()
    for data in table["patches"].to_pylist():
        with Image.open(io.BytesIO(data)) as im:
            assert im.size == (32, 32) and jpeg_quality_of(im) == 75
    print(f"\nstored / source bytes: mean {np.mean(stored / source_bytes):.3f}, patch keep {share:.3f}")


@needs_shared
def test_ray_patch_stage_equals_the_in_process_dropper(ray_session, tmp_path, cifar: Path) -> None:
    """Decode tasks -> CAM actors -> encode tasks write the rows `PatchDropper` gives in one process."""
    from adq_ray.pipeline import patch_dataset

    folder = tmp_path / "mixed"
    for i, path in enumerate(sorted(cifar.glob("*/*.jpg"))[:9]):  # natural images: CAMs without near-ties
        pixels = decoded(path)
        if i < 5:
            write(folder / path.parent.name / path.name, pixels)
        elif i < 7:
            write(folder / path.parent.name / f"{path.stem}.png", pixels[: 20 + i, 3:])
        else:  # larger than the patch image: strip layout
            write(folder / path.parent.name / f"{path.stem}.png", np.kron(pixels, np.ones((3, 2, 1), np.uint8)))
    cfg = config("png", input=str(folder), cam_weights=str(RESNET20), batch_size=4)
    inventory = list_inputs(cfg)
    patch_dataset(cfg, inventory).write_parquet(str(tmp_path / "out"))
    got = pq.read_table(tmp_path / "out").sort_by("sample_id")
    paths = [Path(p) for p in inventory.table["path"].to_pylist()]
    rows = {**rows_for(paths, cfg), "label": inventory.table["label"].to_numpy()}
    expected = PatchDropper(cfg)(rows)
    assert inventory.table["sample_id"].to_pylist() == list(range(len(paths)))
    assert got["source_height"].to_pylist() == [32] * 5 + [25, 26] + [0, 0]
    assert got.schema == expected.schema and got.equals(expected)


def test_a_plain_parquet_reader_rebuilds_the_same_images(tmp_path, sources: list[Path]) -> None:
    """The recipe in codec.py's docstring (pyarrow + Pillow, no adq_ray) gives decode_rows' images, both layouts."""
    big = write(tmp_path / "big.png", np.random.default_rng(3).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    for codec in ("png", "jpeg"):
        cfg = config(codec)
        pq.write_table(PatchDropper(cfg)(rows_for([*sources, big], cfg)), tmp_path / f"{codec}.parquet")
        table = pq.read_table(tmp_path / f"{codec}.parquet")
        expected, _ = decode_rows(table)
        for row, want in zip(table.to_pylist(), expected):
            s, p = row["image_size"], row["patch_size"]
            g, kept = s // p, row["kept_idx"]
            data = Image.open(io.BytesIO(row["patches"])).convert("RGB")
            if row["source_height"]:
                image = np.array(data.resize((s, s), Image.Resampling.BILINEAR))
            else:
                strip, image = np.asarray(data), np.zeros((s, s, 3), np.uint8)
                for j, i in enumerate(kept):
                    image[i // g * p : i // g * p + p, i % g * p : i % g * p + p] = strip[:, j * p : j * p + p]
            dropped = np.ones(g * g, bool)
            dropped[kept] = False
            for i in np.flatnonzero(dropped):
                image[i // g * p : i // g * p + p, i % g * p : i % g * p + p] = 0
            np.testing.assert_array_equal(image, want.permute(1, 2, 0).numpy())
