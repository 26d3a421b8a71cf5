"""GradCAM++ (Chattopadhay et al. 2018) on a named layer of a CNN, for the model's own predicted class.

With A the layer's feature maps and g = d score / dA (score = the predicted class's logit):
alpha_kij = g^2 / (2 g^2 + sum_ab A_kab g^3),  w_k = sum_ij alpha_kij relu(g_kij),
CAM = relu(sum_k w_k A_k), bilinearly resized to the patch grid (spec section 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gradcam_pp(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """CAM (B, h, w) from feature maps and their gradients, both (B, K, h, w).

    Where the denominator vanishes (g = 0, or an exact cancellation) alpha is 0, as in the
    pytorch-grad-cam implementation; the paper leaves 0/0 undefined.
    """
    g2 = grads.pow(2)
    denom = 2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * grads.pow(3)
    nonzero = denom != 0
    alpha = torch.where(nonzero, g2 / torch.where(nonzero, denom, 1.0), 0.0)
    weights = (alpha * grads.clamp(min=0)).sum(dim=(2, 3))
    return torch.einsum("bk,bkhw->bhw", weights, activations).clamp(min=0)


def resize_cam(cam: torch.Tensor, grid: int) -> torch.Tensor:
    """Bilinear resize (B, h, w) -> (B, grid, grid) (half-pixel centres, no antialiasing)."""
    return F.interpolate(cam.unsqueeze(1), size=(grid, grid), mode="bilinear", align_corners=False).squeeze(1)


class GradCAMPlusPlus:
    """GradCAM++ maps of `model` at its sub-module `layer` (e.g. "layer4" of a timm ResNet).

    The layer's output is cut from the graph and made a leaf, so the backward pass runs only
    through the layers after it; the model's parameters are never touched.
    """

    def __init__(self, model: nn.Module, layer: str = "layer4") -> None:
        try:
            target = model.get_submodule(layer)
        except AttributeError as err:
            names = [n for n, _ in model.named_children()]
            raise ValueError(f"{type(model).__name__} has no layer {layer!r}; top-level layers: {names}") from err
        self.model = model
        self._activations: torch.Tensor | None = None
        target.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        self._activations = output.detach().requires_grad_(True)
        return self._activations

    def __call__(self, images: torch.Tensor, grid: int | None = None) -> torch.Tensor:
        """CAM (B, h, w) for normalised images (B, 3, H, W), resized to (B, grid, grid) if grid is given."""
        with torch.enable_grad():
            logits = self.model(images)
            activations, self._activations = self._activations, None
            if activations is None:
                raise RuntimeError("the CAM layer did not run in the model's forward pass")
            score = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()  # samples are independent in eval mode
            (grads,) = torch.autograd.grad(score, activations)
        cam = gradcam_pp(activations.detach(), grads)
        return cam if grid is None else resize_cam(cam, grid)
