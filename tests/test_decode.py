"""decode_image on every good and bad kind of input: exact pixels for the good, a reason for the bad."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode
from torchvision.io import decode_image as tv_decode_image

from adq_ray.ingest.decode import decode_image

SIZE = 32
LIMITS = {"size": SIZE, "max_pixels": 89_478_485, "max_bytes": 1 << 20}


def _pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **kwargs)
    return out.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, followed by a tiny IDAT: the pixels are never there."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _p_with_transparency() -> Image.Image:
    im = Image.fromarray(_pixels((40, 40, 3))).convert("P")
    im.info["transparency"] = 3
    return im


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    return _encode(Image.fromarray(_pixels((20, 48, 3))), "JPEG", exif=exif)


def _animated_gif() -> bytes:
    frames = [Image.fromarray(_pixels((24, 24, 3), seed)).convert("P") for seed in (1, 2)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


GOOD = {
    "rgb jpeg": (_encode(Image.fromarray(_pixels((40, 40, 3))), "JPEG"), ""),
    "rgb png": (_encode(Image.fromarray(_pixels((40, 40, 3))), "PNG"), ""),
    "small, upsampled": (_encode(Image.fromarray(_pixels((8, 8, 3))), "PNG"), ""),
    "not square": (_encode(Image.fromarray(_pixels((20, 60, 3))), "PNG"), ""),
    "grayscale L": (_encode(Image.fromarray(_pixels((40, 40))), "PNG"), "grayscale"),
    "grayscale with alpha LA": (
        _encode(Image.fromarray(_pixels((40, 40, 3))).convert("LA"), "PNG"),
        "grayscale; alpha dropped",
    ),
    "palette with transparency": (_encode(_p_with_transparency(), "PNG"), "palette; alpha dropped"),
    "cmyk jpeg": (_encode(Image.fromarray(_pixels((40, 40, 3))).convert("CMYK"), "JPEG"), "converted from CMYK"),
    "rgba png": (_encode(Image.fromarray(_pixels((40, 40, 4)), "RGBA"), "PNG"), "alpha dropped"),
    "exif rotated": (_exif_rotated(), "EXIF-rotated"),
    "animated gif": (_animated_gif(), "first of 2 frames; palette"),
}


@pytest.mark.parametrize("kind", GOOD)
def test_good_images_match_pillow(kind: str) -> None:
    """Pixels against an independent decoder and resize: torchvision (libjpeg-turbo, libpng, giflib, its own
    EXIF and palette handling) and torch's antialiased bilinear in float64; within one level per pixel.

    Planted bugs caught: NEAREST instead of BILINEAR in decode_image's resize (mean error ~40 levels), the
    EXIF transpose left out (the rotated case), and R and B swapped.
    """
    data, note = GOOD[kind]
    out = decode_image(data, **LIMITS)
    assert out.ok and out.reason == ""
    assert out.note == note
    assert out.image.shape == (SIZE, SIZE, 3) and out.image.dtype == np.uint8
    error = np.abs(out.image.astype(np.float64) - _independent_reference(data))
    assert error.max() <= 1 and error.mean() < 0.25, f"max {error.max()}, mean {error.mean():.3f}"


def _independent_reference(data: bytes) -> np.ndarray:
    """(SIZE, SIZE, 3) float64: torchvision decodes (first frame, EXIF applied), torch resizes (antialias)."""
    image = tv_decode_image(
        torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB, apply_exif_orientation=True
    )
    image = image[0] if image.ndim == 4 else image  # an animated GIF: its frames
    resized = F.interpolate(image[None].double(), size=(SIZE, SIZE), mode="bilinear", antialias=True)
    return resized[0].round().clamp(0, 255).permute(1, 2, 0).numpy()


def test_exif_rotation_turns_the_image() -> None:
    """The 20x48 (h x w) JPEG with orientation 6 shows as 48x20: the reference must differ from no rotation."""
    data = _exif_rotated()
    plain = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    assert not np.array_equal(decode_image(data, **LIMITS).image, plain)


def test_16_bit_png_keeps_the_high_byte() -> None:
    """Pillow's own I;16 -> RGB conversion clips at 255 (near-white); the decoder scales instead."""
    values = np.random.default_rng(0).integers(0, 65536, size=(SIZE, SIZE), dtype=np.uint16)
    data = _encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode_image(data, **LIMITS)
    assert out.note == "from 16-bit; grayscale"
    np.testing.assert_array_equal(out.image, np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=2))


def _corrupt(data: bytes) -> bytes:
    damaged = bytearray(data)
    middle = len(damaged) // 2
    damaged[middle : middle + 200] = b"\xff" * 200
    return bytes(damaged)


JPEG = _encode(Image.fromarray(_pixels((40, 40, 3))), "JPEG")
PNG = _encode(Image.fromarray(_pixels((40, 40, 3))), "PNG")

BAD = {
    "empty": (b"", LIMITS, "empty file"),
    "text renamed .jpg": (b"just some notes, not a picture\n", LIMITS, "not an image / unknown format"),
    "truncated jpeg": (JPEG[: len(JPEG) // 2], LIMITS, "truncated image"),
    "truncated png": (PNG[: len(PNG) // 2], LIMITS, "truncated image"),
    "corrupt jpeg": (_corrupt(JPEG), LIMITS, "corrupt image data"),
    "corrupt png": (_corrupt(PNG), LIMITS, "corrupt image data"),
    "too many bytes": (PNG, {**LIMITS, "max_bytes": 100}, f"too large: {len(PNG)} bytes > 100"),
    "too many pixels": (PNG, {**LIMITS, "max_pixels": 1000}, "too many pixels: 40x40 > 1000"),
    # Over Pillow's warning threshold (MAX_IMAGE_PIXELS) but under its error threshold: our check decides.
    "huge header": (_png_header(10_000, 10_000), LIMITS, "too many pixels: 10000x10000 > 89478485"),
    # Pillow refuses to open a zero-width image at all.
    "zero width": (_png_header(0, 10), LIMITS, "not an image / unknown format"),
}


@pytest.mark.parametrize("kind", BAD)
def test_bad_inputs_are_rejected_with_a_reason(kind: str) -> None:
    data, limits, reason = BAD[kind]
    out = decode_image(data, **limits)
    assert not out.ok and out.image is None
    assert out.reason == reason


def test_decompression_bomb_is_rejected_before_decoding() -> None:
    """100000 x 100000 passes Pillow's hard limit, which raises before our own check can see the size."""
    out = decode_image(_png_header(100_000, 100_000), **LIMITS)
    assert not out.ok
    assert out.reason.startswith("too many pixels: ") and "decompression bomb" in out.reason


@pytest.mark.parametrize("data", [JPEG, PNG], ids=["jpeg", "png"])
def test_random_damage_never_raises(data: bytes) -> None:
    rng = np.random.default_rng(0)
    for _ in range(60):
        damaged = np.frombuffer(data, np.uint8).copy()
        at = rng.integers(0, len(damaged), size=rng.integers(1, 20))
        damaged[at] = rng.integers(0, 256, size=len(at), dtype=np.uint8)
        cut = int(rng.integers(1, len(damaged) + 1))
        out = decode_image(damaged[:cut].tobytes(), **LIMITS)
        assert out.ok != bool(out.reason)
