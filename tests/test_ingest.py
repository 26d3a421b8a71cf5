"""Ingest end to end on real Ray: every input comes out exactly once, good or rejected with a reason."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from util import CIFAR_TAR, make_bucket, write_image_folder

from adq_ray.config import Config
from adq_ray.ingest import Inventory, decode_image, extract_cifar_subset, list_inputs, read_images
from adq_ray.ingest.read import read_input_bytes
from adq_ray.storage import write_bytes, write_json

SIZE = 32


def _config(input: str, **changes) -> Config:
    return Config(input=input, output="unused", image_size=SIZE, patch_size=16, **changes)


def _png(shape: tuple[int, ...], seed: int = 0, mode: str | None = None) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, "PNG")
    return out.getvalue()


def _rows(ds) -> dict[int, dict]:
    """sample_id -> row, checking that no sample id comes out twice."""
    rows = ds.take_all()
    by_id = {int(r["sample_id"]): r for r in rows}
    assert len(by_id) == len(rows)
    return by_id


@pytest.fixture
def mixed_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """2 classes x 4 good images, plus every kind of bad input; returns (root, {relative path: reason})."""
    root = write_image_folder(tmp_path / "mixed", classes=2, per_class=4, size=40)
    good = _png((40, 40, 3))
    bad = {
        "class_0/corrupt.jpg": (good[:60] + b"\xff" * 400 + good[460:], "corrupt image data"),
        "class_0/truncated.png": (good[: len(good) // 2], "truncated image"),
        "class_0/empty.jpg": (b"", "empty file"),
        "class_0/notes.txt": (b"not an image\n", "not an image / unknown format"),
        "class_0/.DS_Store": (b"\x00\x00\x00\x01Bud1", "not an image / unknown format"),
        "class_1/huge.png": (_png((200, 200, 3)), "too large"),
        "stray.png": (good, "unlabeled"),
        "class_1/nested/deep.png": (good, "unlabeled"),
    }
    for rel, (data, _) in bad.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "class_1" / "gray.png").write_bytes(_png((40, 40), seed=3))
    return root, {rel: reason for rel, (_, reason) in bad.items()}


MAX_BYTES = 20_000  # the 200x200 noise PNG is ~120 kB; the 40x40 ones are under 6 kB


def test_listing_keeps_every_file(mixed_folder) -> None:
    root, bad = mixed_folder
    inv = list_inputs(_config(str(root), max_file_bytes=MAX_BYTES))
    table = inv.table.to_pydict()
    files = sorted(str(p) for p in root.rglob("*") if p.is_file())
    assert table["path"] == files  # hidden file and .txt included, sorted
    assert table["sample_id"] == list(range(len(files)))
    assert inv.classes == ["class_0", "class_1"]
    assert table["nbytes"] == [Path(p).stat().st_size for p in files]
    for path, label, name in zip(table["path"], table["label"], table["class_name"]):
        rel = Path(path).relative_to(root).as_posix()
        expected = -1 if bad.get(rel) == "unlabeled" else int(rel.split("/")[0][-1])
        assert (label, name) == (expected, inv.classes[expected] if expected >= 0 else "")


def test_unlabeled_folder_is_one_class(mixed_folder) -> None:
    root, _ = mixed_folder
    inv = list_inputs(_config(str(root), labeled=False))
    assert inv.classes == ["all"]
    assert set(inv.table["label"].to_pylist()) == {0}


def test_read_mixed_folder(ray_session, mixed_folder) -> None:
    root, bad = mixed_folder
    config = _config(str(root), max_file_bytes=MAX_BYTES)
    inv = list_inputs(config)
    rows = _rows(read_images(config, inv))
    assert sorted(rows) == inv.table["sample_id"].to_pylist()
    for sample_id, path, label in zip(*inv.table.select(["sample_id", "path", "label"]).to_pydict().values()):
        row, rel = rows[sample_id], Path(path).relative_to(root).as_posix()
        assert row["label"] == label
        assert row["image"].shape == (SIZE, SIZE, 3) and row["image"].dtype == np.uint8
        if rel in bad:
            assert row["status"] == "rejected" and row["reason"].startswith(bad[rel]), rel
            assert not row["image"].any()
        else:
            assert row["status"] == "ok" and row["reason"] == "", rel
            expected = decode_image(Path(path).read_bytes(), SIZE, config.max_image_pixels, MAX_BYTES)
            np.testing.assert_array_equal(row["image"], expected.image)
            assert row["note"] == ("grayscale" if rel.endswith("gray.png") else "")
    huge = inv.table.filter(pa.compute.match_substring(inv.table["path"], "huge.png"))
    assert rows[huge["sample_id"][0].as_py()]["reason"] == f"too large: {huge['nbytes'][0].as_py()} bytes > {MAX_BYTES}"


def test_inventory_round_trip_and_empty_read(ray_session, image_folder: Path, tmp_path: Path) -> None:
    config = _config(str(image_folder))
    inv = list_inputs(config)
    pq.write_table(inv.table, tmp_path / "inventory.parquet")
    write_json(str(tmp_path / "classes.json"), inv.classes)
    back = Inventory.read(str(tmp_path / "inventory.parquet"), str(tmp_path / "classes.json"))
    assert back.table.equals(inv.table) and back.classes == inv.classes
    path = inv.table["path"][5].as_py()
    assert read_input_bytes(config, path) == Path(path).read_bytes()
    empty = read_images(config, back.subset([]))
    assert empty.count() == 0
    assert set(empty.schema().names) == {"sample_id", "label", "image", "status", "reason", "note"}


def test_wrong_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        list_inputs(_config(str(missing)))


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        list_inputs(_config(str(tmp_path / "empty")))


def test_flat_folder_needs_labeled_false(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(_png((8, 8, 3)))
    with pytest.raises(ValueError, match="labeled=False"):
        list_inputs(_config(str(tmp_path / "flat")))
    assert len(list_inputs(_config(str(tmp_path / "flat"), labeled=False))) == 1


def _write_parquet(folder: Path) -> list[tuple[bytes | None, str | None]]:
    """Two files of (image bytes, string label) rows, the second with a Hugging Face struct column."""
    rows = [(_png((24, 24, 3), seed=i), ["cat", "dog", "ant"][i % 3]) for i in range(7)]
    rows[2] = (b"\x00garbage", "ant")
    rows[4] = (None, "cat")
    rows[5] = (rows[5][0], None)
    folder.mkdir()
    first = pa.table({"image": pa.array([r[0] for r in rows[:4]], pa.binary()), "label": [r[1] for r in rows[:4]]})
    pq.write_table(first, folder / "part-0.parquet", row_group_size=3)
    struct = pa.array([{"bytes": r[0], "path": f"{i}.png"} for i, r in enumerate(rows[4:])])
    pq.write_table(pa.table({"image": struct, "label": [r[1] for r in rows[4:]]}), folder / "part-1.parquet")
    (folder / "_SUCCESS").write_bytes(b"")
    return rows


def test_parquet_input(ray_session, tmp_path: Path) -> None:
    rows = _write_parquet(tmp_path / "pq")
    config = _config(str(tmp_path / "pq"))
    inv = list_inputs(config)
    assert inv.classes == ["ant", "cat", "dog"]
    expected_paths = [f"{tmp_path}/pq/part-0.parquet#{i}" for i in range(4)] + [
        f"{tmp_path}/pq/part-1.parquet#{i}" for i in range(3)
    ]
    assert inv.table["path"].to_pylist() == expected_paths
    labels = [inv.classes.index(r[1]) if r[1] else -1 for r in rows]
    assert inv.table["label"].to_pylist() == labels
    assert inv.table["nbytes"].to_pylist() == [len(r[0] or b"") for r in rows]
    out = _rows(read_images(config, inv))
    assert sorted(out) == list(range(7))
    reasons = {2: "not an image / unknown format", 4: "empty file", 5: "unlabeled"}
    for i, (data, _) in enumerate(rows):
        assert out[i]["label"] == labels[i]
        assert out[i]["reason"] == reasons.get(i, "")
        if i not in reasons:
            np.testing.assert_array_equal(out[i]["image"], decode_image(data, SIZE, 10**8, 10**8).image)
    picked = _rows(read_images(config, inv.subset([1, 3, 6])))
    assert sorted(picked) == [1, 3, 6]
    np.testing.assert_array_equal(picked[3]["image"], out[3]["image"])
    for i in (0, 5, 6):
        assert read_input_bytes(config, expected_paths[i]) == rows[i][0]


def test_listing_ends_and_keys_on_what_it_read(tmp_path: Path) -> None:
    """Directory symlink loops are listed once, not followed; odd entries carry a reason; the digest tracks changes."""
    import os
    import time

    from adq_ray.ingest import walk_input

    root = write_image_folder(tmp_path / "images", classes=2, per_class=2, size=SIZE)
    (root / "class_0" / "loop").symlink_to(root)
    (root / "class_1" / "back").symlink_to(root / "class_0")
    os.mkfifo(root / "class_1" / "pipe.png")
    (root / "class_1" / "dangling.jpg").symlink_to(tmp_path / "absent.jpg")
    config = _config(str(root))
    start = time.perf_counter()
    inv = list_inputs(config)
    assert time.perf_counter() - start < 30  # it ends
    paths = [Path(p).relative_to(root).as_posix() for p in inv.table["path"].to_pylist()]
    reasons = dict(zip(paths, inv.table["reason"].to_pylist()))
    assert len(inv) == 4 + 4 and len(reasons) == 8  # each entry once
    assert reasons["class_0/loop"] == reasons["class_1/back"] == "directory symlink (not followed)"
    assert reasons["class_1/pipe.png"] == "not a regular file: fifo"
    assert reasons["class_1/dangling.jpg"].startswith("broken symlink")
    assert inv.classes == ["class_0", "class_1"]
    digest = walk_input(config).digest
    assert walk_input(config).digest == digest  # stable
    (root / "class_0" / "extra.png").write_bytes(_png((8, 8, 3)))
    assert walk_input(config).digest != digest  # an added input changes it


def test_parquet_integer_labels(tmp_path: Path) -> None:
    table = pa.table({"image": [b"x", b"y", b"z"], "label": pa.array([2, None, 0], pa.int32())})
    pq.write_table(table, tmp_path / "d.parquet")
    inv = list_inputs(_config(str(tmp_path / "d.parquet")))
    assert inv.classes == ["0", "2"]  # dense over the distinct values
    assert inv.table["label"].to_pylist() == [1, -1, 0]
    assert inv.table["class_name"].to_pylist() == ["2", "", "0"]


def test_s3_prefix_reads_like_local(ray_session, s3_server, tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "local", classes=2, per_class=3, size=36)
    (root / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    bucket = make_bucket("ingest")
    for path in sorted(root.rglob("*.*")):
        write_bytes(f"{bucket}/images/{path.relative_to(root).as_posix()}", path.read_bytes())
    remote_config, local_config = _config(f"{bucket}/images"), _config(str(root))
    remote, local = list_inputs(remote_config), list_inputs(local_config)
    local_paths = local.table["path"].to_pylist()
    assert remote.table["path"].to_pylist() == [p.replace(str(root), f"{bucket}/images") for p in local_paths]
    assert remote.table.drop_columns("path").equals(local.table.drop_columns("path"))
    got, want = _rows(read_images(remote_config, remote)), _rows(read_images(local_config, local))
    assert sorted(got) == sorted(want)
    for i, row in want.items():
        assert (got[i]["status"], got[i]["reason"], got[i]["label"]) == (row["status"], row["reason"], row["label"])
        np.testing.assert_array_equal(got[i]["image"], row["image"])
    assert sum(r["status"] == "rejected" for r in got.values()) == 1


@pytest.mark.skipif(not CIFAR_TAR.exists(), reason="shared CIFAR-10 tarball not present")
def test_cifar_subset(ray_session, tmp_path: Path) -> None:
    classes = ["cat", "dog", "ship"]
    dest = extract_cifar_subset(CIFAR_TAR, tmp_path / "cifar", per_class=34, classes=classes)
    with tarfile.open(CIFAR_TAR) as tar:
        names = [n.split("/") for n in tar.getnames()]
    for name in classes:
        first = sorted(p[2] for p in names if len(p) == 3 and p[:2] == ["train", name])[:34]
        assert sorted(f.name for f in (dest / name).iterdir()) == first
    assert extract_cifar_subset(CIFAR_TAR, dest, per_class=34, classes=classes) == dest  # idempotent
    with pytest.raises(FileExistsError):
        extract_cifar_subset(CIFAR_TAR, dest, per_class=10, classes=classes)

    config = _config(str(dest))
    inv = list_inputs(config)
    assert inv.classes == classes and len(inv) == 102
    rows = _rows(read_images(config, inv))
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert np.bincount([r["label"] for r in rows.values()]).tolist() == [34, 34, 34]


def test_file_vanished_after_listing_is_rejected_not_fatal(ray_session, tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "images", classes=2, per_class=4, size=SIZE)
    config = _config(str(folder))
    inv = list_inputs(config)
    gone = inv.table["path"][3].as_py()
    Path(gone).unlink()
    out = _rows(read_images(config, inv))
    assert sorted(out) == list(range(8))
    assert out[3]["status"] == "rejected" and out[3]["reason"].startswith("unreadable:")
    assert all(out[i]["status"] == "ok" for i in range(8) if i != 3)
