"""CIFAR ResNet-20/32/44/56 (He et al. 2016, option-A shortcuts), registered as timm models.

The layout matches the widely used `resnet20-12fca82f.th` checkpoints (keys conv1, bn1, layer1-3,
linear), so `timm.create_model("cifar_resnet20")` plus `apply_weights` loads them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes - in_planes if (stride != 1 or in_planes != planes) else 0
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.pad:  # option A: subsample and zero-pad channels, no parameters
            shortcut = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad // 2, self.pad // 2))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """timm-style model: forward_features -> (B, 64, H/4, W/4), forward_head -> logits."""

    def __init__(self, depth: int, num_classes: int = 10, **_: object) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.num_classes = num_classes
        self.num_features = 64
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes = [16, 32, 64]
        in_planes = 16
        for i, p in enumerate(planes):
            layers = [
                _BasicBlock(in_planes if j == 0 else p, p, (1 if i == 0 else 2) if j == 0 else 1) for j in range(blocks)
            ]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            in_planes = p
        self.linear = nn.Linear(64, num_classes) if num_classes else nn.Identity()
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.linear(x)

    def get_classifier(self) -> nn.Module:
        return self.linear

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.linear = nn.Linear(64, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _factory(depth: int):
    def create(pretrained: bool = False, **kwargs: object) -> CifarResNet:
        if pretrained:
            raise ValueError("cifar_resnet weights are files: pass their path or s3:// URL as weights")
        return CifarResNet(depth, **kwargs)

    create.__name__ = f"cifar_resnet{depth}"
    create.__doc__ = f"CIFAR ResNet-{depth}, option-A shortcuts."
    return register_model(create)


cifar_resnet20 = _factory(20)
cifar_resnet32 = _factory(32)
cifar_resnet44 = _factory(44)
cifar_resnet56 = _factory(56)
