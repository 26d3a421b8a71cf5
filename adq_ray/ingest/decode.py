"""Decode untrusted image bytes into model-size RGB arrays, or say why not (pure: no Ray).

Every failure becomes a `Decoded` with a `reason`; no Pillow exception escapes, so one bad file
never fails a distributed job. (Storage errors are not decided here: see `ingest.read` and `storage.retry`.)
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

EMPTY = "empty file"
NOT_AN_IMAGE = "not an image / unknown format"
TRUNCATED = "truncated image"
CORRUPT = "corrupt image data"
UNLABELED = "unlabeled"
UNREADABLE = "unreadable"

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_JPEG_EOI = b"\xff\xd9"
_GRAY_MODES = {"1", "L", "LA", "La"}


@dataclass(frozen=True)
class Decoded:
    """An RGB uint8 (size, size, 3) `image` (or JPEG `data` left to a later decoder) plus a `note`, or a `reason`."""

    image: np.ndarray | None = None
    note: str = ""
    reason: str = ""
    data: bytes = b""

    @property
    def ok(self) -> bool:
        return self.image is not None or bool(self.data)

    @classmethod
    def rejected(cls, reason: str) -> Decoded:
        return cls(reason=reason)


def unreadable(err: OSError) -> str:
    """The rejection reason for a file that cannot be read for a reason of its own (gone, forbidden, ...)."""
    text = " ".join(str(err).split())
    if isinstance(err, FileNotFoundError) or "HTTP status 404" in text or "NO_SUCH_KEY" in text:
        return f"{UNREADABLE}: gone after listing (404): {text}"
    if isinstance(err, PermissionError) or "ACCESS_DENIED" in text or "HTTP status 403" in text:
        return f"{UNREADABLE}: forbidden (403): {text}"
    return f"{UNREADABLE}: {text}"


def too_large(nbytes: int, max_bytes: int) -> str:
    """The rejection reason for an input over the byte limit (also used before reading a file)."""
    return f"too large: {nbytes} bytes > {max_bytes}"


def decode_image(data: bytes, size: int, max_pixels: int, max_bytes: int, defer_jpeg: bool = False) -> Decoded:
    """Decode `data` and resize the whole image to size x size (aspect ratio not kept).

    The models take square inputs, so the image is resized as a whole, not cropped: bilinear with
    antialias (Pillow's resize scales the filter when shrinking); small images are upsampled.
    The header's pixel count is checked against `max_pixels` before any pixel is decoded; Pillow's
    own decompression-bomb error (above 2 * `PIL.Image.MAX_IMAGE_PIXELS`) is a rejection too.
    With `defer_jpeg`, a plain JPEG (`_plain_jpeg`) that passes these checks is not decoded: its bytes
    are passed on as `data` for a batched decoder downstream (nvJPEG in the embed actor).
    """
    if len(data) > max_bytes:
        return Decoded.rejected(too_large(len(data), max_bytes))
    if not data:
        return Decoded.rejected(EMPTY)
    try:
        with warnings.catch_warnings():
            # The max_pixels check below decides; Pillow's palette-transparency notice is expected.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width * height > max_pixels:
                    return Decoded.rejected(f"too many pixels: {width}x{height} > {max_pixels}")
                if defer_jpeg and _plain_jpeg(im, data):
                    return Decoded(data=data, note="grayscale" if im.mode in _GRAY_MODES else "")
                rgb, notes = to_rgb(im)
                image = np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    except Image.DecompressionBombError:
        return Decoded.rejected(f"too many pixels: more than {2 * Image.MAX_IMAGE_PIXELS} (decompression bomb)")
    except UnidentifiedImageError:
        return Decoded.rejected(NOT_AN_IMAGE)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a property of the input
        return Decoded.rejected(TRUNCATED if "truncated" in str(e).lower() else CORRUPT)
    return Decoded(image=image, note="; ".join(notes))


def _plain_jpeg(im: Image.Image, data: bytes) -> bool:
    """An 8-bit RGB or grayscale JPEG, upright (no EXIF rotation) and complete (ends with EOI), from its header.

    What nvJPEG decodes to the pixels Pillow gives (within IDCT rounding); CMYK, rotated, truncated or
    trailing-data JPEGs are left to Pillow, so their notes and reasons are the CPU path's.
    """
    return (
        im.format == "JPEG"
        and im.mode in ("RGB", "L")
        and im.getexif().get(0x0112, 1) == 1
        and data.endswith(_JPEG_EOI)
    )


def to_rgb(im: Image.Image) -> tuple[Image.Image, list[str]]:
    """Load, apply EXIF orientation and convert to 8-bit RGB, noting each non-trivial step."""
    notes = []
    if getattr(im, "n_frames", 1) > 1:
        notes.append(f"first of {im.n_frames} frames")
    im.load()
    orientation = im.getexif().get(0x0112, 1)
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
        notes.append("EXIF-rotated")
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        # Pillow's own I;16 -> L conversion clips at 255; keep the high byte instead (libpng's strip-16).
        high = np.right_shift(np.clip(np.asarray(im, dtype=np.int64), 0, 65535), 8).astype(np.uint8)
        return Image.fromarray(high).convert("RGB"), [*notes, "from 16-bit", "grayscale"]
    if mode == "CMYK":
        notes.append("converted from CMYK")
    elif mode == "P":
        notes.append("palette")
        if "transparency" in im.info:
            notes.append("alpha dropped")
    elif mode not in {"RGB", *_GRAY_MODES, *_ALPHA_MODES}:
        notes.append(f"converted from {mode}")
    if mode in _GRAY_MODES:
        notes.append("grayscale")
    if mode in _ALPHA_MODES:
        notes.append("alpha dropped")
    return (im if mode == "RGB" else im.convert("RGB")), notes
