"""GradCAM++ against a float64 loop reference, patch selection (count, ties, order), patch grids."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from adq_ray.models import create_model, normalize
from adq_ray.patches.gradcam import GradCAMPlusPlus, gradcam_pp
from adq_ray.patches.grid import expand_mask, keep_mask, patchify, top_patches, unpatchify

torch.set_num_threads(1)


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.features = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Tanh())
        self.head = nn.Linear(6 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(self.stem(x))
        return self.head(nn.functional.adaptive_avg_pool2d(a.square(), 2).flatten(1))


def reference_cam(model: nn.Module, images: torch.Tensor, grid: int) -> torch.Tensor:
    """GradCAM++ with explicit loops over k, i, j (float64), then a loop bilinear resize."""
    out = []
    for x in images:
        a = model.features(model.stem(x[None].double()))
        logits = model.head(nn.functional.adaptive_avg_pool2d(a.square(), 2).flatten(1))[0]
        (g,) = torch.autograd.grad(logits[int(logits.argmax())], a)
        a, g = a[0].detach(), g[0]
        k_n, h, w = a.shape
        cam = torch.zeros(h, w, dtype=torch.float64)
        for k in range(k_n):
            total = sum(float(a[k, i, j]) for i in range(h) for j in range(w))
            w_k = 0.0
            for i in range(h):
                for j in range(w):
                    gij = float(g[k, i, j])
                    denom = 2 * gij**2 + total * gij**3
                    alpha = gij**2 / denom if denom != 0 else 0.0
                    w_k += alpha * max(gij, 0.0)
            cam += w_k * a[k]
        out.append(bilinear(cam.clamp(min=0), grid))
    return torch.stack(out)


def bilinear(src: torch.Tensor, size: int) -> torch.Tensor:
    """Half-pixel-centre bilinear resize (PyTorch align_corners=False) with explicit loops."""
    h, w = src.shape
    dst = torch.zeros(size, size, dtype=torch.float64)
    for y in range(size):
        for x in range(size):
            sy, sx = max((y + 0.5) * h / size - 0.5, 0.0), max((x + 0.5) * w / size - 0.5, 0.0)
            y0, x0 = min(int(sy), h - 1), min(int(sx), w - 1)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = sy - y0, sx - x0
            top = (1 - fx) * src[y0, x0] + fx * src[y0, x1]
            bottom = (1 - fx) * src[y1, x0] + fx * src[y1, x1]
            dst[y, x] = (1 - fy) * top + fy * bottom
    return dst


@pytest.mark.parametrize("grid", [4, 7, 2])
def test_gradcam_matches_loop_reference(grid: int) -> None:
    torch.manual_seed(0)
    model = TinyCNN().double().eval()
    images = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    cam = GradCAMPlusPlus(model, "features")(images, grid)
    expected = reference_cam(model, images, grid)
    assert cam.dtype == torch.float64 and cam.shape == (5, grid, grid)
    assert expected.abs().max() > 0  # the reference is not trivially zero
    torch.testing.assert_close(cam, expected, rtol=1e-9, atol=1e-12)


def test_gradcam_float32_and_batch_independent() -> None:
    torch.manual_seed(1)
    model = TinyCNN().eval()
    images = torch.randn(6, 3, 8, 8)
    cam = GradCAMPlusPlus(model, "features")
    together = cam(images, 4)
    alone = torch.cat([cam(x[None], 4) for x in images])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        together.double(), reference_cam(model.double(), images.double(), 4), rtol=1e-3, atol=1e-5
    )
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_zero_gradient_gives_zero_weight() -> None:
    a = torch.rand(1, 2, 3, 3, dtype=torch.float64)
    g = torch.zeros_like(a)
    g[0, 1, 0, 0] = 0.5
    cam = gradcam_pp(a, g)
    alpha = 0.25 / (2 * 0.25 + a[0, 1].sum() * 0.125)
    torch.testing.assert_close(cam[0], (alpha * 0.5 * a[0, 1]).clamp(min=0))


def test_gradcam_on_timm_resnet18_at_64px() -> None:
    """The hooked CAM on timm's ResNet-18 equals the float64 loop formula on timm's own forward_features /
    forward_head (no hook), for each image's predicted class.

    Planted bugs caught: the score of class 0 instead of the predicted class; relu dropped from the
    gradients in w_k; the hook on layer3 instead of the named layer.
    """
    torch.manual_seed(0)
    model = create_model("resnet18", "random").eval()
    twin = copy.deepcopy(model).double()  # copied before the hook is registered: the reference has none
    images = normalize(torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8))
    cam = GradCAMPlusPlus(model, "layer4")(images, 4)
    expected = torch.stack([_timm_reference_cam(twin, x.double(), 4) for x in images])
    assert cam.shape == (3, 4, 4) and expected.amax(dim=(1, 2)).min() > 0
    torch.testing.assert_close(cam.double(), expected, rtol=1e-3, atol=1e-4 * float(expected.max()))
    with pytest.raises(ValueError, match="ResNet has no layer 'layer9'; top-level layers: .*'layer4'"):
        GradCAMPlusPlus(model, "layer9")


def _timm_reference_cam(model: nn.Module, image: torch.Tensor, grid: int) -> torch.Tensor:
    """GradCAM++ of one image at the output of timm's forward_features, loops over k, i, j in float64."""
    a = model.forward_features(image[None])
    logits = model.forward_head(a)[0]
    (g,) = torch.autograd.grad(logits[int(logits.argmax())], a)
    a, g = a[0].detach(), g[0]
    cam = torch.zeros(a.shape[1:], dtype=torch.float64)
    for k in range(a.shape[0]):
        total = float(a[k].sum())
        w_k = 0.0
        for gij in g[k].flatten().tolist():
            denom = 2 * gij**2 + total * gij**3
            w_k += (gij**2 / denom if denom != 0 else 0.0) * max(gij, 0.0)
        cam += w_k * a[k]
    return bilinear(cam.clamp(min=0), grid)


def test_top_patches_count_ties_and_order() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (20, 16), generator=g).float()  # many ties
    for mask_ratio in (0.0, 0.2, 0.5, 0.9):
        keep = max(1, math.floor(16 * (1 - mask_ratio) + 1e-9))
        kept = top_patches(scores, keep)
        assert kept.shape == (20, keep)
        for row, idx in zip(scores.tolist(), kept.tolist()):
            expected = sorted(sorted(range(16), key=lambda i: (-row[i], i))[:keep])
            assert idx == expected
    assert top_patches(torch.zeros(1, 196), 156).tolist() == [list(range(156))]
    with pytest.raises(ValueError):
        top_patches(scores, 17)


def test_patchify_layout_and_round_trip() -> None:
    images = torch.arange(2 * 3 * 12 * 12).reshape(2, 3, 12, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 9, 3, 4, 4)
    for r in range(3):
        for c in range(3):
            assert torch.equal(patches[:, r * 3 + c], images[:, :, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4])
    assert torch.equal(unpatchify(patches, 3), images)
    with pytest.raises(ValueError):
        patchify(images, 5)


def test_keep_mask_expands_to_pixels() -> None:
    kept = torch.tensor([[0, 3], [1, 2]])
    mask = keep_mask(kept, 4)
    assert mask.tolist() == [[True, False, False, True], [False, True, True, False]]
    pixels = expand_mask(mask, 2)
    assert pixels.shape == (2, 1, 4, 4)
    assert torch.equal(patchify(pixels, 2).flatten(2).all(-1), mask)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gradcam_on_cuda_matches_cpu() -> None:
    torch.manual_seed(2)
    model = TinyCNN().eval()
    images = torch.randn(4, 3, 8, 8)
    cpu = GradCAMPlusPlus(model, "features")(images, 4)
    cuda = GradCAMPlusPlus(model.cuda(), "features")(images.cuda(), 4)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-3, atol=1e-5)
