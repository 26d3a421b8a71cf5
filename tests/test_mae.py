"""MAE: official state-dict layout, explicit-mask forward vs a loop reference, reconstruction, loading, Ray reader."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from adq_ray import storage
from adq_ray.config import Config
from adq_ray.models.mae import ARCHS, load_mae, mae_vit_base_patch16, mae_vit_tiny_patch8, sincos_pos_embed
from adq_ray.patches.dropper import PatchDropper
from adq_ray.patches.grid import expand_mask, keep_mask
from adq_ray.patches.reconstruct import CompressedImages, read_reconstructed, reconstruct

torch.set_num_threads(1)

BLOCK_KEYS = {  # timm Block as in facebookresearch/mae: name -> shape for width d, mlp ratio 4
    "norm1.weight": lambda d: (d,),
    "norm1.bias": lambda d: (d,),
    "attn.qkv.weight": lambda d: (3 * d, d),
    "attn.qkv.bias": lambda d: (3 * d,),
    "attn.proj.weight": lambda d: (d, d),
    "attn.proj.bias": lambda d: (d,),
    "norm2.weight": lambda d: (d,),
    "norm2.bias": lambda d: (d,),
    "mlp.fc1.weight": lambda d: (4 * d, d),
    "mlp.fc1.bias": lambda d: (4 * d,),
    "mlp.fc2.weight": lambda d: (d, 4 * d),
    "mlp.fc2.bias": lambda d: (d,),
}


def official_base_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of models_mae.mae_vit_base_patch16 (ViT-B/16 encoder, 512-d 8-block decoder)."""
    d, e = 768, 512
    shapes = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, 197, d),
        "patch_embed.proj.weight": (d, 3, 16, 16),
        "patch_embed.proj.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
        "decoder_embed.weight": (e, d),
        "decoder_embed.bias": (e,),
        "mask_token": (1, 1, e),
        "decoder_pos_embed": (1, 197, e),
        "decoder_norm.weight": (e,),
        "decoder_norm.bias": (e,),
        "decoder_pred.weight": (768, e),
        "decoder_pred.bias": (768,),
    }
    for prefix, depth, width in (("blocks", 12, d), ("decoder_blocks", 8, e)):
        shapes.update({f"{prefix}.{i}.{k}": f(width) for i in range(depth) for k, f in BLOCK_KEYS.items()})
    return shapes


def test_official_checkpoint_layout_loads_strictly(tmp_path) -> None:
    torch.manual_seed(0)
    state = mae_vit_base_patch16().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == official_base_shapes()
    torch.save({"model": state}, tmp_path / "mae_base.pth")
    model = load_mae("mae_vit_base_patch16", str(tmp_path / "mae_base.pth"))
    assert not model.training and not model.norm_pix_loss
    for key in ("blocks.11.attn.qkv.weight", "decoder_pred.weight", "mask_token", "pos_embed"):
        assert torch.equal(model.state_dict()[key], state[key])


def test_load_mae_names_and_errors(tmp_path) -> None:
    state = mae_vit_tiny_patch8().state_dict()
    del state["mask_token"]
    torch.save({"model": state}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="missing.*mask_token"):
        load_mae("mae_vit_tiny_patch8", str(tmp_path / "broken.pth"))
    with pytest.raises(ValueError, match="unknown MAE"):
        load_mae("mae_vit_gigantic", "random")
    with pytest.raises(ValueError, match="no hub checkpoint"):
        load_mae("mae_vit_tiny_patch8", "hub")
    assert load_mae("mae_vit_tiny_patch8", "random", norm_pix_loss=True).norm_pix_loss


def test_checkpoint_args_say_how_predictions_are_read(tmp_path) -> None:
    """A train-mae checkpoint's args set norm_pix_loss (and the sizes); an explicit argument wins."""
    state = ARCHS["mae_vit_tiny"](img_size=32, patch_size=4).state_dict()
    for norm in (False, True):
        args = {"arch": "mae_vit_tiny", "img_size": 32, "patch_size": 4, "norm_pix_loss": norm}
        torch.save({"model": state, "args": args}, tmp_path / f"{norm}.pth")
        model = load_mae("mae_vit_tiny", str(tmp_path / f"{norm}.pth"))
        assert (model.norm_pix_loss, model.patch_size, model.grid) == (norm, 4, 8)
        assert load_mae("mae_vit_tiny", str(tmp_path / f"{norm}.pth"), norm_pix_loss=not norm).norm_pix_loss != norm


def test_sincos_pos_embed_matches_numpy_reference() -> None:
    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    dim, grid = 16, 5
    mesh = np.stack(np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64)))
    expected = np.concatenate(
        [np.zeros((1, dim)), np.concatenate([one_d(dim // 2, mesh[0]), one_d(dim // 2, mesh[1])], 1)]
    )
    np.testing.assert_allclose(sincos_pos_embed(dim, grid).numpy(), expected, rtol=1e-6, atol=1e-6)


def reference_forward(mae, imgs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per image: encode the kept tokens (boolean indexing), put mask tokens at the dropped positions."""
    out = []
    for x, k in zip(imgs, keep):
        tokens = mae.patch_embed(x[None])[0] + mae.pos_embed[0, 1:]
        seq = torch.cat([mae.cls_token[0] + mae.pos_embed[0, :1], tokens[k]])[None]
        for blk in mae.blocks:
            seq = blk(seq)
        latent = mae.decoder_embed(mae.norm(seq))[0]
        full, visible = [latent[0]], iter(latent[1:])
        for i in range(len(k)):
            full.append(next(visible) if k[i] else mae.mask_token[0, 0])
        seq = torch.stack(full)[None] + mae.decoder_pos_embed
        for blk in mae.decoder_blocks:
            seq = blk(seq)
        out.append(mae.decoder_pred(mae.decoder_norm(seq))[0, 1:])
    return torch.stack(out)


@pytest.fixture(scope="module")
def tiny_mae():
    torch.manual_seed(0)
    return mae_vit_tiny_patch8().eval()


def random_keep(batch: int, kept: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return keep_mask(torch.stack([torch.randperm(16, generator=g)[:kept] for _ in range(batch)]), 16)


def test_explicit_mask_forward_matches_reference(tiny_mae) -> None:
    mae = mae_vit_tiny_patch8().double().eval()
    mae.load_state_dict(tiny_mae.state_dict())
    imgs = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    keep = random_keep(4, 11)
    with torch.no_grad():
        pred = mae(imgs, keep)
        torch.testing.assert_close(pred, reference_forward(mae, imgs, keep), rtol=1e-10, atol=1e-10)
        assert pred.shape == (4, 16, 8 * 8 * 3)
        # pixels: official 'nhwpqc' patch layout, unpatchified
        pixels = mae.predict_pixels(imgs, keep)
        r, c = 2, 1
        tile = pixels[:, :, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8].permute(0, 2, 3, 1).reshape(4, -1)
        torch.testing.assert_close(tile, pred[:, r * 4 + c])
    with pytest.raises(ValueError, match="same number"):
        mae(imgs[:2], torch.stack([random_keep(1, 11)[0], random_keep(1, 10)[0]]))


def test_norm_pix_predictions_use_visible_patch_statistics(tiny_mae) -> None:
    mae = mae_vit_tiny_patch8(norm_pix_loss=True).double().eval()
    mae.load_state_dict(tiny_mae.state_dict())
    imgs = torch.randn(2, 3, 32, 32, dtype=torch.float64) * 0.7 + 0.3
    keep = random_keep(2, 9, seed=1)
    with torch.no_grad():
        pred, pixels = mae(imgs, keep), mae.predict_pixels(imgs, keep)
    for b in range(2):
        visible = [
            imgs[b, :, (i // 4) * 8 : (i // 4) * 8 + 8, (i % 4) * 8 : (i % 4) * 8 + 8] for i in range(16) if keep[b, i]
        ]
        mean = sum(float(v.mean()) for v in visible) / len(visible)
        var = sum(float(v.var()) for v in visible) / len(visible)
        expected = pred[b, 5] * (var + 1e-6) ** 0.5 + mean
        torch.testing.assert_close(pixels[b, :, 8:16, 8:16].permute(1, 2, 0).reshape(-1), expected)


def test_reconstruct_pastes_only_dropped_patches(tiny_mae) -> None:
    """Kept patches are the input's pixels; dropped ones equal a float64 reference built here: the per-image
    loop forward (`reference_forward`), the official 'pqc' tile layout placed patch by patch, own
    (un)normalisation, clamp and round; within one level (float32 against float64).

    Planted bugs caught: the tile layout transposed in predict_pixels ('qpc'), the un-normalisation left
    out of reconstruct, and the keep mask inverted in the paste.
    """
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=g)
    keep = random_keep(3, 12, seed=2)
    out = reconstruct(tiny_mae, images, keep)
    pixels = expand_mask(keep, 8).expand_as(images)
    assert out.dtype == torch.uint8
    assert torch.equal(out[pixels], images[pixels])
    expected = reference_reconstruction(tiny_mae, images, keep)
    assert (out[~pixels].double() - expected[~pixels]).abs().max() <= 1
    with pytest.raises(ValueError, match="the MAE takes 32 px images in 8 px patches, got 16 px, 4 patches"):
        reconstruct(tiny_mae, images[:, :, :16, :16], keep[:, :4])


def reference_reconstruction(mae, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, 3, 32, 32) float64 pixel values the MAE predicts for every patch (8 px tiles, 4 x 4 grid)."""
    twin = mae_vit_tiny_patch8().double().eval()
    twin.load_state_dict(mae.state_dict())
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        pred = reference_forward(twin, (images.double() / 255 - mean) / std, keep)  # (B, 16, 8 * 8 * 3)
    out = torch.zeros(images.shape, dtype=torch.float64)
    for b in range(len(images)):
        for i in range(16):
            r, c = divmod(i, 4)
            tile = pred[b, i].reshape(8, 8, 3).permute(2, 0, 1)  # official layout: rows p, columns q, channel c
            out[b, :, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8] = tile
    return ((out * std + mean).clamp(0, 1) * 255).round()


def small_dataset(n: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:32, 0:32]
    base = rng.uniform(30, 220, (n, 1, 1, 3)) + 40 * np.sin(
        (yy + xx)[None, ..., None] / rng.uniform(3, 9, (n, 1, 1, 1))
    )
    images = np.clip(base + rng.normal(0, 4, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return {"sample_id": np.arange(100, 100 + n, dtype=np.int64), "label": np.arange(n) % 3, "image": images}


def tiny_config(codec: str = "png") -> Config:
    return Config(
        input="unused",
        output="unused",
        patch_image_size=32,
        patch_size=8,
        codec=codec,
        cam_model="cifar_resnet20",
        cam_weights="random",
        cam_layer="layer3",
        device="cpu",
    )


def test_load_from_s3_and_read_dataset_from_s3(s3_server, tiny_mae) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="adq-mae")
    buffer = io.BytesIO()
    torch.save({"model": tiny_mae.state_dict()}, buffer)
    storage.write_bytes("s3://adq-mae/weights/tiny.pth", buffer.getvalue())
    mae = load_mae("mae_vit_tiny_patch8", "s3://adq-mae/weights/tiny.pth")
    assert all(torch.equal(a, b) for a, b in zip(mae.state_dict().values(), tiny_mae.state_dict().values()))

    data = small_dataset(6)
    table = PatchDropper(tiny_config())(data)
    fs, path = storage.resolve("s3://adq-mae/out/dataset/part-0.parquet")
    pq.write_table(table, path, filesystem=fs)
    storage.write_json("s3://adq-mae/out/dataset/_SUCCESS", {})
    images = CompressedImages("s3://adq-mae/out/dataset", mae=mae)
    assert len(images) == 6
    image, label = images[4]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label == 1
    keep = keep_mask(torch.tensor(table["kept_idx"][4].as_py())[None], 16)
    pixels = expand_mask(keep, 8)[0].expand(3, 32, 32)
    source = torch.from_numpy(data["image"][4]).permute(2, 0, 1)
    assert torch.equal(image[pixels], source[pixels])
    assert isinstance(storage.resolve("s3://adq-mae/out")[0], pafs.S3FileSystem)


def test_ray_dropper_then_reconstructed_reader(ray_session, tmp_path, tiny_mae) -> None:
    """PatchDropper on Ray, then the Ray reader: kept pixels are the source's, dropped ones the float64
    reference's (not only equal to the torch Dataset, which shares the reader's code).

    Planted bugs caught: the reader filling with the patch mean instead of the MAE, and the reader loading
    random MAE weights instead of `mae_weights`.
    """
    ray = ray_session
    torch.save({"model": tiny_mae.state_dict()}, tmp_path / "tiny.pth")
    data = small_dataset(12)
    rows = [{k: v[i] for k, v in data.items()} for i in range(12)]
    dataset_dir = tmp_path / "out" / "dataset"
    ray.data.from_items(rows).map_batches(
        PatchDropper,
        fn_constructor_kwargs={"config": tiny_config()},
        batch_size=5,
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0.5,
    ).write_parquet(str(dataset_dir))
    storage.write_json(str(dataset_dir / "_SUCCESS"), {})
    written = pq.read_table(dataset_dir)
    assert written.num_rows == 12 and written.schema.field("kept_idx").type.list_size == tiny_config().kept_patches

    weights = str(tmp_path / "tiny.pth")
    restored = read_reconstructed(
        str(dataset_dir), mae="mae_vit_tiny_patch8", mae_weights=weights, batch_size=4
    ).take_all()
    assert sorted(r["sample_id"] for r in restored) == list(range(100, 112))
    local = CompressedImages(str(dataset_dir), mae=tiny_mae)
    by_id = {int(local.table["sample_id"][i].as_py()): local[i] for i in range(len(local))}
    for row in restored:
        i = int(row["sample_id"]) - 100
        image = torch.from_numpy(np.array(row["image"])).permute(2, 0, 1)
        assert image.dtype == torch.uint8 and row["label"] == data["label"][i]
        sub = written.filter(pc.equal(written["sample_id"], row["sample_id"]))
        keep = keep_mask(torch.tensor(sub["kept_idx"][0].as_py())[None], 16)
        pixels = expand_mask(keep, 8)[0].expand(3, 32, 32)
        source = torch.from_numpy(data["image"][i]).permute(2, 0, 1)
        assert torch.equal(image[pixels], source[pixels])
        # The dropped patches: the float64 reference from the source image and the stored keep mask.
        expected = reference_reconstruction(tiny_mae, source[None], keep)[0]
        assert (image[~pixels].double() - expected[~pixels]).abs().max() <= 1
        assert torch.equal(image, by_id[int(row["sample_id"])][0])  # same pixels as the torch Dataset

    filled, _ = CompressedImages(str(dataset_dir), fill="mean")[0]
    assert filled.shape == (3, 32, 32) and not torch.equal(filled, by_id[int(local.table["sample_id"][0].as_py())][0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reconstruct_on_cuda_keeps_pixels(tiny_mae) -> None:
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    keep = random_keep(2, 12, seed=3)
    mae = mae_vit_tiny_patch8().cuda().eval()
    mae.load_state_dict(tiny_mae.state_dict())
    out = reconstruct(mae, images, keep)
    pixels = expand_mask(keep, 8).expand_as(images)
    assert out.device == images.device and torch.equal(out[pixels], images[pixels])
    assert (out.int() - reconstruct(tiny_mae, images, keep).int()).abs().max() <= 2
