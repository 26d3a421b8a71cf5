"""Masked autoencoder (He et al. 2022) with the facebookresearch/mae state-dict layout.

Parameter names and shapes equal `models_mae.MaskedAutoencoderViT` (patch_embed.proj, cls_token,
pos_embed, blocks.N.*, norm, decoder_embed, mask_token, decoder_pos_embed, decoder_blocks.N.*,
decoder_norm, decoder_pred), so the official checkpoints load strictly. Unlike the official
forward, which masks at random, the caller passes the keep mask explicitly.

norm_pix_loss: the official *visualize* checkpoints (the ones DQ used) were trained on plain
normalised pixels, so their predictions are pixels. The *pretrain_full* checkpoints were trained
with norm_pix_loss=True: their predictions are per-patch standardised, and the true statistics of
a dropped patch are unknown; `predict_pixels` then re-scales them with the mean and variance
averaged over the image's visible patches (an approximation: dropped patches get the average
brightness and contrast of the visible ones).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import partial

import torch
from timm.models.vision_transformer import Block, PatchEmbed
from torch import nn

from adq_ray.models.weights import HUB, RANDOM, load_state_dict

_URL = "https://dl.fbaipublicfiles.com/mae"

# name -> (architecture, url, trained with norm_pix_loss)
CHECKPOINTS: dict[str, tuple[str, str, bool]] = {
    "mae_visualize_vit_base": ("mae_vit_base_patch16", f"{_URL}/visualize/mae_visualize_vit_base.pth", False),
    "mae_visualize_vit_large": ("mae_vit_large_patch16", f"{_URL}/visualize/mae_visualize_vit_large.pth", False),
    "mae_visualize_vit_large_ganloss": (
        "mae_vit_large_patch16",
        f"{_URL}/visualize/mae_visualize_vit_large_ganloss.pth",
        False,
    ),
    "mae_pretrain_vit_base_full": ("mae_vit_base_patch16", f"{_URL}/pretrain/mae_pretrain_vit_base_full.pth", True),
    "mae_pretrain_vit_large_full": ("mae_vit_large_patch16", f"{_URL}/pretrain/mae_pretrain_vit_large_full.pth", True),
    "mae_pretrain_vit_huge_full": ("mae_vit_huge_patch14", f"{_URL}/pretrain/mae_pretrain_vit_huge_full.pth", True),
}
# architecture -> its checkpoint for weights="hub"
DEFAULT_CHECKPOINT = {
    "mae_vit_base_patch16": "mae_visualize_vit_base",
    "mae_vit_large_patch16": "mae_visualize_vit_large",
    "mae_vit_huge_patch14": "mae_pretrain_vit_huge_full",
}


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (grid^2 [+1], dim), as MAE's get_2d_sincos_pos_embed."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))
    coords = torch.arange(grid, dtype=torch.float64)
    gw, gh = torch.meshgrid(coords, coords, indexing="xy")  # first half encodes w, second half h
    parts = [
        torch.cat([torch.sin(c.reshape(-1, 1) * omega), torch.cos(c.reshape(-1, 1) * omega)], dim=1) for c in (gw, gh)
    ]
    embed = torch.cat(parts, dim=1)
    if cls_token:
        embed = torch.cat([torch.zeros(1, dim, dtype=torch.float64), embed])
    return embed.float()


class MaskedAutoencoderViT(nn.Module):
    """ViT encoder over the kept patches, lightweight ViT decoder predicting every patch's pixels."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),  # as the official builders pass
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.norm_pix_loss = norm_pix_loss
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.grid = self.patch_embed.grid_size[0]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)]
        )
        self.norm = norm_layer(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The official initialisation: fixed sin-cos positions, xavier linears, N(0, 0.02) tokens."""
        self.pos_embed.data.copy_(sincos_pos_embed(self.pos_embed.shape[-1], self.grid).unsqueeze(0))
        self.decoder_pos_embed.data.copy_(sincos_pos_embed(self.decoder_pos_embed.shape[-1], self.grid).unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_encoder(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Encode the patches at `ids_keep` (B, K): (B, 1 + K, D) with the cls token first."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch (B, L, p*p*C) from the latent and the kept-first order's inverse."""
        x = self.decoder_embed(latent)
        mask_tokens = self.mask_token.expand(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def forward(self, imgs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Predictions (B, L, p*p*C) in the official 'nhwpqc' patch layout, for normalised imgs (B, C, H, W)
        and a boolean keep mask (B, L) with the same number of kept patches in every row."""
        counts = keep.sum(dim=1)
        if not bool((counts == counts[0]).all()):
            raise ValueError("every image in a batch must keep the same number of patches")
        ids_shuffle = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept first, ascending
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        latent = self.forward_encoder(imgs, ids_shuffle[:, : int(counts[0])])
        return self.forward_decoder(latent, ids_restore)

    def predict_pixels(self, imgs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Predicted normalised image (B, C, H, W), de-standardised if trained with norm_pix_loss."""
        b, c, h, w = imgs.shape
        p = self.patch_size
        pred = self.forward(imgs, keep)
        if self.norm_pix_loss:
            target = imgs.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
            visible = keep.unsqueeze(-1).to(target.dtype)
            n = visible.sum(dim=1)
            mean = (target.mean(-1, keepdim=True) * visible).sum(1) / n
            var = (target.var(-1, keepdim=True) * visible).sum(1) / n
            pred = pred * (var.unsqueeze(1) + 1e-6).sqrt() + mean.unsqueeze(1)
        pred = pred.reshape(b, h // p, w // p, p, p, c)
        return pred.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


# The official recipes; the decoder is the class default (512-d, 8 blocks, 16 heads, MLP ratio 4).
def mae_vit_base_patch16(**kwargs) -> MaskedAutoencoderViT:
    """ViT-B/16 encoder."""
    return MaskedAutoencoderViT(patch_size=16, embed_dim=768, depth=12, num_heads=12, **kwargs)


def mae_vit_large_patch16(**kwargs) -> MaskedAutoencoderViT:
    """ViT-L/16 encoder (DQ's choice)."""
    return MaskedAutoencoderViT(patch_size=16, embed_dim=1024, depth=24, num_heads=16, **kwargs)


def mae_vit_huge_patch14(**kwargs) -> MaskedAutoencoderViT:
    """ViT-H/14 encoder."""
    return MaskedAutoencoderViT(patch_size=14, embed_dim=1280, depth=32, num_heads=16, **kwargs)


def mae_vit_tiny_patch8(**kwargs) -> MaskedAutoencoderViT:
    """A ~40k-parameter MAE on 32 px images in 8 px patches, for tests."""
    kwargs.setdefault("img_size", 32)
    return MaskedAutoencoderViT(
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        **kwargs,
    )


ARCHS: dict[str, Callable[..., MaskedAutoencoderViT]] = {
    f.__name__: f for f in (mae_vit_base_patch16, mae_vit_large_patch16, mae_vit_huge_patch14, mae_vit_tiny_patch8)
}


def load_mae(name: str, weights: str = HUB, norm_pix_loss: bool | None = None, **kwargs) -> MaskedAutoencoderViT:
    """An MAE in eval mode from a checkpoint name (`CHECKPOINTS`) or an architecture (`ARCHS`).

    weights: "hub" (the named checkpoint, or the architecture's `DEFAULT_CHECKPOINT`, downloaded
    once into torch's hub cache), "random", or a checkpoint path / s3:// URL (the official
    {"model": state_dict} layout or a bare state dict), loaded strictly. norm_pix_loss: how the
    weights were trained; None means the hub table's value, or the `args` an `adq train-mae` checkpoint
    carries (which also give the image and patch size of the `mae_vit_<size>` archs), else False.

    Args:
        name: a checkpoint name (`CHECKPOINTS`) or an architecture (`ARCHS`).
        weights: "hub" (downloads), "random", a path or an s3:// URL.
        norm_pix_loss: see above; **kwargs go to the architecture.

    Returns:
        The MAE, in eval mode, on the CPU.

    Example:
        >>> mae = load_mae("mae_vit_large_patch16", "s3://bucket/weights/mae_visualize_vit_large.pth")  # doctest: +SKIP
    """
    hub_name = name if name in CHECKPOINTS else DEFAULT_CHECKPOINT.get(name)
    arch = CHECKPOINTS[name][0] if name in CHECKPOINTS else name
    if arch not in ARCHS:
        raise ValueError(f"unknown MAE {name!r}; architectures: {sorted(ARCHS)}, checkpoints: {sorted(CHECKPOINTS)}")
    if weights == HUB and hub_name is None:
        raise ValueError(f"no hub checkpoint for {name!r}: pass a path, an s3:// URL or 'random' as weights")
    saved = checkpoint_args(weights) if weights not in (HUB, RANDOM) else {}
    if norm_pix_loss is None:
        norm_pix_loss = bool(saved.get("norm_pix_loss", weights == HUB and CHECKPOINTS[hub_name][2]))
    if arch.removeprefix("mae_vit_") in MAE_SIZES:  # sized archs: the checkpoint says its image and patch size
        kwargs = {k: saved[k] for k in ("img_size", "patch_size") if k in saved} | kwargs
    model = ARCHS[arch](norm_pix_loss=norm_pix_loss, **kwargs)
    if weights != RANDOM:
        uri = _download(CHECKPOINTS[hub_name][1]) if weights == HUB else weights
        state = load_state_dict(uri)
        own = model.state_dict()
        shapes = [
            f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
            for k, v in state.items()
            if k in own and v.shape != own[k].shape
        ]
        if shapes:
            raise ValueError(
                f"MAE weights {uri!r} do not fit {arch}: shapes differ ({'; '.join(shapes[:3])}); "
                "pass the size and patch size the checkpoint was trained with"
            )
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"MAE weights {uri!r} do not fit {arch}: missing {missing[:5]}, unexpected {unexpected[:5]} "
                "(encoder-only checkpoints such as mae_pretrain_vit_large.pth lack the decoder)"
            )
    return model.eval()


def _download(url: str) -> str:
    """The local copy of `url` in torch's hub cache, fetched on first use."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", url.rsplit("/", 1)[-1])
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, path)
        except Exception as err:  # offline cluster: say what to do instead
            raise RuntimeError(f"could not download {url} ({err}); pass a local path or s3:// URL as weights") from err
    return path


# Sizes for `adq train-mae`: (embed_dim, depth, num_heads, decoder_embed_dim, decoder_depth, decoder_num_heads).
# "base" is the official ViT-B MAE; "small" and "tiny" follow the ViT-S / ViT-Ti widths with lighter decoders.
MAE_SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "tiny": (192, 6, 3, 128, 2, 4),
    "small": (384, 12, 6, 256, 4, 8),
    "base": (768, 12, 12, 512, 8, 16),
}


def _sized(size: str) -> Callable[..., MaskedAutoencoderViT]:
    embed, depth, heads, dec_embed, dec_depth, dec_heads = MAE_SIZES[size]

    def create(patch_size: int = 16, **kwargs) -> MaskedAutoencoderViT:
        return MaskedAutoencoderViT(
            patch_size=patch_size,
            embed_dim=embed,
            depth=depth,
            num_heads=heads,
            decoder_embed_dim=dec_embed,
            decoder_depth=dec_depth,
            decoder_num_heads=dec_heads,
            **kwargs,
        )

    create.__name__ = f"mae_vit_{size}"
    create.__doc__ = f"ViT-{size} MAE at any image and patch size (kwargs img_size, patch_size), for `adq train-mae`."
    return create


ARCHS.update({f"mae_vit_{size}": _sized(size) for size in MAE_SIZES})


def random_keep(
    batch: int, num_patches: int, mask_ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Boolean keep masks (batch, L): each row keeps the same int(L (1 - mask_ratio)) patches, uniformly at
    random (MAE's per-sample random masking; noise from the CPU `generator`)."""
    kept = int(num_patches * (1 - mask_ratio))
    if not 0 < kept <= num_patches:
        raise ValueError(f"mask_ratio {mask_ratio} keeps {kept} of {num_patches} patches; it must keep at least one")
    order = torch.rand(batch, num_patches, generator=generator).argsort(dim=1)
    keep = torch.zeros(batch, num_patches, dtype=torch.bool)
    return keep.scatter_(1, order[:, :kept], True)


def patch_targets(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C) in the official 'nhwpqc' layout (MAE's `patchify`)."""
    b, c, h, w = imgs.shape
    p = patch_size
    return imgs.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)


def mae_loss(model: MaskedAutoencoderViT, imgs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The official objective for normalised imgs (B, C, H, W) and keep masks (B, L): `reconstruction_loss`."""
    return reconstruction_loss(model(imgs, keep), imgs, keep, model.patch_size, model.norm_pix_loss)


def reconstruction_loss(
    pred: torch.Tensor, imgs: torch.Tensor, keep: torch.Tensor, patch_size: int, norm_pix_loss: bool
) -> torch.Tensor:
    """Mean squared error of predictions (B, L, p*p*C) over the dropped patches only, against per-patch
    standardised pixels when `norm_pix_loss` (MAE's `forward_loss`)."""
    target = patch_targets(imgs, patch_size)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)
    dropped = (~keep).to(per_patch.dtype)
    return (per_patch * dropped).sum() / dropped.sum()


def warmup_cosine(step: float, total: float, warmup: float) -> float:
    """The official schedule's factor on the base lr: linear warmup, then a half-cycle cosine to zero."""
    if step < warmup:
        return step / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1e-12)))


def masked_psnr(images: torch.Tensor, reference: torch.Tensor, keep: torch.Tensor) -> float:
    """PSNR (dB, peak 255) of uint8 `images` against uint8 `reference` (B, C, S, S) over the dropped patches."""
    grid = int(round(keep.shape[1] ** 0.5))
    pixels = (~keep).reshape(-1, grid, grid)
    p = images.shape[-1] // grid
    pixels = pixels.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1).expand_as(images)
    error = (images.double() - reference.double())[pixels].pow(2).mean()
    return float(10 * torch.log10(255.0**2 / error.clamp_min(1e-12)))


def checkpoint_args(uri: str) -> dict:
    """The `args` dict an `adq train-mae` checkpoint carries (arch, img_size, patch_size, norm_pix_loss), or {}."""
    from adq_ray import storage

    try:
        blob = torch.load(storage.open_binary(uri), map_location="cpu", weights_only=True)
    except Exception:  # unreadable here: load_state_dict reports it with the file's name
        return {}
    args = blob.get("args") if isinstance(blob, dict) else None
    return dict(args) if isinstance(args, dict) else {}
