import numpy as np
import torch

from adq_ray.embed.views import SCALE, crop_params, two_views


def test_crop_params_are_per_sample_and_valid():
    a = [crop_params(s, v, seed=3, height=40, width=30) for s in range(50) for v in (0, 1)]
    assert a == [crop_params(s, v, seed=3, height=40, width=30) for s in range(50) for v in (0, 1)]
    assert a != [crop_params(s, v, seed=4, height=40, width=30) for s in range(50) for v in (0, 1)]
    for top, left, h, w, _ in a:
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 30
        assert SCALE[0] * 1200 * 0.5 <= h * w <= 1200
    assert 0 < sum(flip for *_, flip in a) < len(a)


def test_views_do_not_depend_on_batch_composition():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 24, 24, generator=g)
    ids = np.arange(100, 106)
    together = two_views(images, ids, seed=1)
    alone = torch.cat([two_views(images[i : i + 1], ids[i : i + 1], seed=1) for i in range(6)])
    # together: [view1 x6, view2 x6]; alone: per image [view1, view2]
    assert torch.allclose(together[:6], alone[0::2], atol=1e-6)
    assert torch.allclose(together[6:], alone[1::2], atol=1e-6)


def test_crop_resize_is_exact_on_a_linear_ramp():
    """Bilinear crop-and-resize of a linear image is the same linear function at the output pixel centres."""
    s = 32
    y, x = torch.meshgrid(torch.arange(s, dtype=torch.float64), torch.arange(s, dtype=torch.float64), indexing="ij")
    image = (0.01 * x + 0.02 * y).expand(1, 3, s, s).contiguous()
    views = two_views(image, np.array([7]), seed=0)
    for v, out in enumerate(views):
        top, left, h, w, flip = crop_params(7, v, 0, s, s)
        cx = left + (torch.arange(s, dtype=torch.float64) + 0.5) * w / s - 0.5
        cy = top + (torch.arange(s, dtype=torch.float64) + 0.5) * h / s - 0.5
        expected = 0.01 * cx[None, :] + 0.02 * cy[:, None]
        if flip:
            expected = expected.flip(-1)
        interior = (slice(2, -2), slice(2, -2))  # borders clamp to the edge pixel
        assert torch.allclose(out[0][interior], expected[interior], atol=1e-6)
