"""Classifiers trained from scratch to evaluate a compressed dataset (spec section 6).

`resnet18_cifar` is the DQ/ADQ recipe model: timm's ResNet-18 with the CIFAR stem (3x3 stride-1
first conv, no max-pool). Any timm ResNet takes the same `_cifar` suffix; any other timm name
(e.g. the tiny `cifar_resnet20`) is used as is.
"""

from __future__ import annotations

from torch import nn

from adq_ray.models import create_model

CIFAR_SUFFIX = "_cifar"


def cifar_stem(model: nn.Module) -> nn.Module:
    """Swap a timm/torchvision ResNet's 7x7/2 conv + max-pool stem for a 3x3/1 conv, in place.

    32 px inputs keep their full resolution into `layer1`, as in the CIFAR ResNet-18 of DQ/ADQ.
    """
    if not isinstance(getattr(model, "conv1", None), nn.Conv2d) or not hasattr(model, "maxpool"):
        raise ValueError(f"{type(model).__name__} has no ResNet stem (conv1 + maxpool) to replace")
    old = model.conv1
    model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def create_classifier(name: str, num_classes: int) -> nn.Module:
    """A randomly initialised classifier in train mode; `<resnet>_cifar` gets the CIFAR stem."""
    if name.endswith(CIFAR_SUFFIX):
        model = cifar_stem(create_model(name.removesuffix(CIFAR_SUFFIX), num_classes=num_classes))
    else:
        model = create_model(name, num_classes=num_classes)
    return model.train()
