"""Patch dropping (GradCAM++), compact patch storage, and image reconstruction (spec section 5)."""

from adq_ray.patches.codec import CODECS, dataset_schema, decode_patches, encode_patches
from adq_ray.patches.dropper import PatchDropper
from adq_ray.patches.gradcam import GradCAMPlusPlus, gradcam_pp, resize_cam
from adq_ray.patches.grid import expand_mask, keep_mask, patchify, top_patches, unpatchify
from adq_ray.patches.reconstruct import (
    CompressedImages,
    assemble,
    decode_rows,
    fill_mean,
    read_reconstructed,
    reconstruct,
    restore,
)

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
