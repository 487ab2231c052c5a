"""The model architectures a run config may name, without importing torch (config parsing stays light)."""

from __future__ import annotations

__all__ = ["ARCHITECTURES", "IMAGENET_ARCHITECTURES", "MIN_IMAGE_SIZE"]

ARCHITECTURES = ("cnn3", "resnet18", "resnet34", "resnet50", "densenet121", "alexnet", "vgg11", "inception_v3")
"""Every ``model`` value; :data:`common.models.MODELS` builds each one."""

MIN_IMAGE_SIZE = {"inception_v3": 75, "alexnet": 63}
"""The smallest ``image-size`` an architecture accepts (32 for the others)."""

IMAGENET_ARCHITECTURES = tuple(a for a in ARCHITECTURES if a != "cnn3")
"""The architectures with torchvision ImageNet weights (``pretrained-weights = "imagenet"``): all but ``cnn3``."""
