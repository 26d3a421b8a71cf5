"""Patch dropping (GradCAM++), compact patch storage, and image reconstruction (spec section 5)."""

from adq_ray.patches.codec import CODECS, dataset_schema, decode_patches, encode_patches
from adq_ray.patches.gradcam import GradCAMPlusPlus, gradcam_pp, resize_cam
from adq_ray.patches.grid import expand_mask, keep_mask, patchify, top_patches, unpatchify

__all__ = [
    "CODECS",
    "CompressedImages",
    "GradCAMPlusPlus",
    "PatchDropper",
    "assemble",
    "dataset_schema",
    "decode_patches",
    "decode_rows",
    "encode_patches",
    "expand_mask",
    "fill_mean",
    "gradcam_pp",
    "keep_mask",
    "patchify",
    "read_reconstructed",
    "reconstruct",
    "resize_cam",
    "restore",
    "top_patches",
    "unpatchify",
]

# The Ray-side modules load on first use: `import adq_ray.patches` (the math) imports no Ray.
_LAZY = {
    "PatchDropper": "adq_ray.patches.dropper",
    **dict.fromkeys(
        ("CompressedImages", "assemble", "decode_rows", "fill_mean", "read_reconstructed", "reconstruct", "restore"),
        "adq_ray.patches.reconstruct",
    ),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
