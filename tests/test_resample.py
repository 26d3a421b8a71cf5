"""`pillow_upsample` against Pillow itself: the CAM actors upsample small sources to the same pixels the
decode tasks' `Image.resize(BILINEAR)` gave, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adq_ray.patches.resample import pillow_coefficients, pillow_upsample


def pillow(images: np.ndarray, size: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(x).resize((size, size), Image.Resampling.BILINEAR)) for x in images])


def ours(images: np.ndarray, size: int) -> np.ndarray:
    return pillow_upsample(torch.from_numpy(images).permute(0, 3, 1, 2), size).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("shape", [(32, 32, 224), (32, 32, 64), (1, 1, 7), (17, 23, 64), (48, 20, 64), (64, 64, 64)])
def test_upsample_equals_pillow(shape: tuple[int, int, int]) -> None:
    h, w, size = shape
    images = np.random.default_rng(h * w).integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ours(images, size), pillow(images, size))


def test_upsample_equals_pillow_on_random_shapes() -> None:
    """Extremes included: all-0 and all-255 images (rounding and clipping), every shape up to S in each axis."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        size = int(rng.integers(2, 70))
        h, w = (int(v) for v in rng.integers(1, size + 1, 2))
        images = rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)
        images[1], images[2] = 0, 255
        np.testing.assert_array_equal(ours(images, size), pillow(images, size), err_msg=f"{h}x{w} -> {size}")


def test_coefficients_are_pillows_normalised_fixed_point() -> None:
    """Each output's weights sum to 2^22 within the rounding of its taps; 32 -> 224 reads 2 inputs per output."""
    k = pillow_coefficients(32, 224)
    assert np.abs(k.sum(1) - 2**22).max() <= 2 and ((k > 0).sum(1) <= 2).all()


def test_reductions_are_refused() -> None:
    with pytest.raises(ValueError, match="enlarges only"):
        pillow_upsample(torch.zeros(1, 3, 65, 10, dtype=torch.uint8), 64)
