"""Patch dropping (GradCAM++), compact patch storage, and image reconstruction (spec section 5)."""

from adq_ray.patches.codec import CODECS, dataset_schema, decode_patches, encode_patches
from adq_ray.patches.gradcam import GradCAMPlusPlus, gradcam_pp, resize_cam
from adq_ray.patches.grid import expand_mask, keep_mask, patchify, source_mask, top_patches, unpatchify

__all__ = [
    "CODECS",
    "CompressedImages",
    "GradCAMPlusPlus",
    "PatchDropper",
    "PatchSelector",
    "assemble",
    "dataset_schema",
    "decode_patches",
    "decode_rows",
    "decode_source",
    "encode_patches",
    "encode_rows",
    "encode_source",
    "expand_mask",
    "fill_mean",
    "gradcam_pp",
    "jpeg_quality_of",
    "keep_mask",
    "patchify",
    "read_reconstructed",
    "reconstruct",
    "resize_cam",
    "restore",
    "source_mask",
    "top_patches",
    "unpatchify",
]
