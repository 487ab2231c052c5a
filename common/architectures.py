"""The model architectures a run config may name, without importing torch (config parsing stays light)."""

from __future__ import annotations

__all__ = ["ARCHITECTURES", "BLOCKS", "IMAGENET_ARCHITECTURES", "MIN_IMAGE_SIZE"]

ARCHITECTURES = ("cnn3", "resnet18", "resnet34", "resnet50", "densenet121", "alexnet", "vgg11", "inception_v3")
"""Every ``model`` value; :data:`common.models.MODELS` builds each one."""

MIN_IMAGE_SIZE = {"inception_v3": 75, "alexnet": 63}
"""The smallest ``image-size`` an architecture accepts (32 for the others)."""

IMAGENET_ARCHITECTURES = tuple(a for a in ARCHITECTURES if a != "cnn3")
"""The architectures with torchvision ImageNet weights (``pretrained-weights = "imagenet"``): all but ``cnn3``."""

_RESNET_BLOCKS = (("stem", ("conv1", "bn1")), *((f"layer{i}", (f"layer{i}",)) for i in range(1, 5)), ("fc", ("fc",)))
BLOCKS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "cnn3": (
        *((f"conv{i + 1}", (f"features.{4 * i}", f"features.{4 * i + 1}")) for i in range(3)),
        ("classifier", ("classifier",)),
    ),
    "resnet18": _RESNET_BLOCKS,
    "resnet34": _RESNET_BLOCKS,
    "resnet50": _RESNET_BLOCKS,
    "densenet121": (
        ("stem", ("features.conv0", "features.norm0")),
        *((f"denseblock{i}", (f"features.denseblock{i}", f"features.transition{i}")) for i in range(1, 4)),
        ("denseblock4", ("features.denseblock4", "features.norm5")),
        ("classifier", ("classifier",)),
    ),
    "alexnet": (
        *((f"conv{i + 1}", (f"features.{index}",)) for i, index in enumerate((0, 3, 6, 8, 10))),
        *((f"fc{i + 6}", (f"classifier.{index}",)) for i, index in enumerate((1, 4, 6))),
    ),
    "vgg11": (
        ("conv1", ("features.0",)),
        ("conv2", ("features.3",)),
        ("conv3", ("features.6", "features.8")),
        ("conv4", ("features.11", "features.13")),
        ("conv5", ("features.16", "features.18")),
        *((f"fc{i + 6}", (f"classifier.{index}",)) for i, index in enumerate((0, 3, 6))),
    ),
    "inception_v3": (
        ("stem", ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")),
        ("mixed5", ("Mixed_5b", "Mixed_5c", "Mixed_5d")),
        ("mixed6", ("Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "AuxLogits")),
        ("mixed7", ("Mixed_7a", "Mixed_7b", "Mixed_7c")),
        ("fc", ("fc",)),
    ),
}
"""Each architecture's blocks in forward order, as ``(name, module prefixes)``: what ``train-from-block`` counts.

Block 0 is the first; ``train-from-block = k`` freezes blocks 0 to k-1. The prefixes are the
state-dict names of the plain and the DP-compatible variant alike.
"""
