"""Create timm / torchvision-architecture models with weights from the hub, a file or S3."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from adq_ray.models import cifar_resnet  # noqa: F401 - registers cifar_resnet* with timm
from adq_ray.models.weights import HUB, RANDOM, load_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def create_model(name: str, weights: str = RANDOM, num_classes: int | None = None) -> nn.Module:
    """A timm model by name, in eval mode.

    weights: "random" (initialised, for tests), "hub" (timm's pretrained download) or a checkpoint
    path / s3:// URL. A checkpoint may lack the classifier (or carry another head): every other key
    must match exactly, so a wrong file fails loudly instead of silently embedding with noise.
    """
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if name not in timm.list_models() and not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}: not a timm architecture")
    if weights == HUB:
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # network, missing weights: say what to do instead
            raise RuntimeError(
                f"could not fetch pretrained weights for {name!r} from the hub ({err}); "
                "pass a local path or s3:// URL as weights, or 'random'"
            ) from err
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
        if weights != RANDOM:
            _load_checkpoint(model, weights)
    return model.eval()


def _load_checkpoint(model: nn.Module, uri: str) -> None:
    state = load_state_dict(uri)
    head = {f"{n}." for n, m in model.named_modules() if m is model.get_classifier()}
    own = model.state_dict()
    is_head = lambda key: any(key.startswith(h) for h in head)  # noqa: E731
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not is_head(k) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not is_head(k)]
    if missing or unexpected:
        raise ValueError(
            f"weights {uri!r} do not fit {type(model).__name__}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    model.load_state_dict(usable, strict=False)


def normalize(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 or [0,1] float (B,3,H,W) -> normalised float."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> uint8 (B, 3, size, size): antialiased bilinear (Pillow's filter when shrinking), rounded."""
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def select_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but no CUDA device is visible")
    return torch.device(device)
