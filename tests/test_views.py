import numpy as np
import torch

from adq_ray.embed.views import SCALE, crop_boxes, two_views, uniform


def test_uniforms_are_per_sample_and_well_spread():
    ids = np.arange(20_000)
    u = uniform(0, ids, 0, 0)
    assert np.array_equal(u[5:9], uniform(0, ids[5:9], 0, 0))  # independent of the batch
    assert not np.array_equal(u, uniform(1, ids, 0, 0)) and not np.array_equal(u, uniform(0, ids, 1, 0))
    assert ((u >= 0) & (u < 1)).all()
    counts, _ = np.histogram(u, bins=10, range=(0, 1))
    assert counts.min() > 1_800 and counts.max() < 2_200  # roughly uniform (expected 2,000 each)


def test_crop_boxes_are_per_sample_and_valid():
    ids = np.arange(50)
    a = crop_boxes(ids, 0, seed=3, height=40, width=30)
    assert np.array_equal(a, crop_boxes(ids, 0, seed=3, height=40, width=30))
    assert np.array_equal(a[10:20], crop_boxes(ids[10:20], 0, seed=3, height=40, width=30))
    assert not np.array_equal(a, crop_boxes(ids, 0, seed=4, height=40, width=30))
    top, left, h, w, flip = a.T
    assert (top >= 0).all() and (top + h <= 40).all() and (left >= 0).all() and (left + w <= 30).all()
    assert (h * w >= SCALE[0] * 1200 * 0.5).all() and (h * w <= 1200).all()
    assert 0 < flip.sum() < len(a)


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
    for sample in range(5):
        views = two_views(image, np.array([sample]), seed=0)
        for v, out in enumerate(views):
            top, left, h, w, flip = crop_boxes(np.array([sample]), v, 0, s, s)[0]
            cx = left + (torch.arange(s, dtype=torch.float64) + 0.5) * w / s - 0.5
            cy = top + (torch.arange(s, dtype=torch.float64) + 0.5) * h / s - 0.5
            expected = 0.01 * cx[None, :] + 0.02 * cy[:, None]
            if flip:
                expected = expected.flip(-1)
            interior = (slice(2, -2), slice(2, -2))  # borders clamp to the edge pixel
            assert torch.allclose(out[0][interior], expected[interior], atol=1e-6)
