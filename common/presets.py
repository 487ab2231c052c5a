"""Dataset presets: the fixed class list, channels, size and augmentation of each modality."""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["DatasetPreset", "PRESETS", "get_preset", "positive_classes"]


@dataclass(frozen=True)
class DatasetPreset:
    """What every party agrees on for one dataset.

    Attributes:
        name: registry key, e.g. ``"brain-mri"``.
        classes: class names in label-index order. Never taken from a folder listing.
        channels: 1 (gray) or 3 (RGB) input channels.
        image_size: the size the source paper trains at, in pixels (square).
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
        rotation: training augmentation, maximum rotation in degrees.
        flips: training augmentation, random horizontal and vertical flips.
        zoom: training augmentation, maximum relative zoom in or out.
        shift: training augmentation, maximum shift as a fraction of the size.
        right_angles: training augmentation, a random rotation by 0, 90, 180 or 270 degrees
            (tissue has no up: the lossless rotations of histology).
        color_jitter: training augmentation, maximum relative change of brightness, contrast
            and saturation, and a quarter of it in hue (stain variation); 0 = none.
        multilabel: each image carries any number of ``classes`` (labels), read from a labels
            CSV, instead of exactly one class folder.
        positive: the abnormal classes: their summed probability is the score an operating point
            (``target-sensitivity``) thresholds, one finding against the rest.
    """

    name: str
    classes: tuple[str, ...]
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rotation: float
    flips: bool
    zoom: float
    shift: float
    right_angles: bool = False
    color_jitter: float = 0.0
    multilabel: bool = False
    positive: tuple[str, ...] = ()


_GRAY = {"channels": 1, "mean": (0.5,), "std": (0.25,)}
_RGB = {"channels": 3, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}

PRESETS: dict[str, DatasetPreset] = {
    "brain-mri": DatasetPreset(
        name="brain-mri",
        positive=("glioma", "meningioma", "pituitary"),
        classes=("glioma", "meningioma", "notumor", "pituitary"),
        image_size=150,
        rotation=20.0,
        flips=True,
        zoom=0.1,
        shift=0.1,
        **_GRAY,
    ),
    "chest-xray": DatasetPreset(
        name="chest-xray",
        positive=("PNEUMONIA",),
        classes=("NORMAL", "PNEUMONIA"),
        image_size=224,
        rotation=10.0,
        flips=False,
        zoom=0.1,
        shift=0.05,
        **_GRAY,
    ),
    "chest-xray-covid": DatasetPreset(
        name="chest-xray-covid",
        positive=("COVID", "Lung_Opacity", "Viral Pneumonia"),
        classes=("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"),
        image_size=224,
        rotation=10.0,
        flips=False,
        zoom=0.1,
        shift=0.05,
        **_GRAY,
    ),
    "histology": DatasetPreset(
        name="histology",
        positive=("adenoma", "adenocarcinoma-well", "adenocarcinoma-moderately", "adenocarcinoma-poorly"),
        classes=(
            "normal",
            "adenoma",
            "adenocarcinoma-well",
            "adenocarcinoma-moderately",
            "adenocarcinoma-poorly",
        ),
        image_size=224,
        rotation=90.0,
        flips=True,
        zoom=0.0,
        shift=0.0,
        **_RGB,
    ),
    "histology-colon": DatasetPreset(
        name="histology-colon",
        positive=("colon_aca",),
        classes=("colon_aca", "colon_n"),
        image_size=224,
        rotation=0.0,
        flips=True,
        zoom=0.0,
        shift=0.0,
        right_angles=True,
        color_jitter=0.1,
        **_RGB,
    ),
    "histology-kather": DatasetPreset(
        name="histology-kather",
        positive=("tumor",),
        classes=("tumor", "stroma", "complex", "lympho", "debris", "mucosa", "adipose", "empty"),
        image_size=150,
        rotation=90.0,
        flips=True,
        zoom=0.0,
        shift=0.0,
        **_RGB,
    ),
    "nih-chestxray": DatasetPreset(
        name="nih-chestxray",
        classes=(
            "Atelectasis",
            "Cardiomegaly",
            "Consolidation",
            "Edema",
            "Effusion",
            "Emphysema",
            "Fibrosis",
            "Hernia",
            "Infiltration",
            "Mass",
            "Nodule",
            "Pleural_Thickening",
            "Pneumonia",
            "Pneumothorax",
        ),
        image_size=224,
        rotation=10.0,
        flips=False,
        zoom=0.1,
        shift=0.05,
        multilabel=True,
        **_GRAY,
    ),
}
# The 3-class COVID set (no Lung_Opacity images): the 4-class preset without that class.
PRESETS["chest-xray-covid-3class"] = replace(
    PRESETS["chest-xray-covid"], name="chest-xray-covid-3class", classes=("COVID", "Normal", "Viral Pneumonia")
)


def positive_classes(preset: DatasetPreset, classes: tuple[str, ...]) -> tuple[str, ...]:
    """The run's classes whose summed probability an operating point thresholds; ``()``: none.

    The preset's abnormal classes among ``classes`` (a ``classes`` override may drop some); when
    that leaves none or every class, a two-class run takes its last class, and others have none.
    """
    chosen = tuple(c for c in classes if c in preset.positive)
    if 0 < len(chosen) < len(classes):
        return chosen
    return classes[-1:] if len(classes) == 2 else ()


def get_preset(name: str) -> DatasetPreset:
    """Return the preset called ``name``; raise ``ValueError`` naming the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of: {', '.join(PRESETS)}")
    return PRESETS[name]
