"""Texture level against a nested-loop Sobel reference."""

from __future__ import annotations

import numpy as np
import pytest
import reference
import torch

from adq_ray.embed.texture import texture_level


def test_texture_level_equals_nested_loop_reference():
    images = torch.rand(3, 3, 7, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    images[1] = images[1].round()  # hard edges
    images[2, :, :, :4] = 0.25  # flat left half: zero gradient except at the seam
    np.testing.assert_allclose(texture_level(images).numpy(), reference.texture_level(images.numpy()), atol=1e-12)


def test_uint8_input_is_read_as_unit_range():
    pixels = torch.randint(0, 256, (2, 3, 10, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    tl = texture_level(pixels)
    assert tl.dtype == torch.float32 and tl.shape == (2,)
    np.testing.assert_allclose(tl.numpy(), reference.texture_level(pixels.double().numpy() / 255), rtol=1e-5)


def test_flat_and_rotated_images():
    assert texture_level(torch.full((1, 3, 5, 5), 0.7)).item() == pytest.approx(0, abs=1e-6)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # |Sobel_x| and |Sobel_y| swap under transposition, and the mean weighs them equally.
    np.testing.assert_allclose(
        texture_level(images.transpose(-1, -2)).numpy(), texture_level(images).numpy(), atol=1e-12
    )


@pytest.mark.parametrize(
    "images",
    [torch.rand(3, 8, 8), torch.rand(1, 1, 8, 8), torch.rand(1, 3, 1, 8), torch.zeros(1, 3, 8, 8, dtype=torch.int32)],
)
def test_bad_images_raise(images):
    with pytest.raises(ValueError, match="images must"):
        texture_level(images)
