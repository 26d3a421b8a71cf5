"""Model code: timm backbones (+ CIFAR ResNets), weight loading, the MAE."""

from adq_ray.models.backbone import create_model, normalize, resize, select_device
from adq_ray.models.weights import HUB, RANDOM, apply_weights, load_state_dict

__all__ = ["HUB", "RANDOM", "apply_weights", "create_model", "load_state_dict", "normalize", "resize", "select_device"]
