"""Tests for common.data.transforms: normalisation by hand, deterministic evaluation, training augmentation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.transforms import v2

from common.config import parse_run_config
from common.data.transforms import build_transform
from common.experiment import preset_for
from common.presets import PRESETS, get_preset

MRI = PRESETS["brain-mri"]
HISTO = PRESETS["histology"]


@pytest.mark.parametrize("preset", [MRI, HISTO], ids=lambda p: p.name)
def test_eval_transform_normalises_by_hand(preset):
    values = [200, 10, 128][: preset.channels]
    image = torch.stack([torch.full((32, 32), v, dtype=torch.uint8) for v in values])
    out = build_transform(preset, train=False)(image)
    assert out.dtype == torch.float32 and out.shape == image.shape
    for c, v in enumerate(values):
        expected = (v / 255.0 - preset.mean[c]) / preset.std[c]
        assert torch.allclose(out[c], torch.full((32, 32), expected), atol=1e-6)


def test_eval_transform_is_deterministic():
    image = torch.randint(0, 256, (1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    t = build_transform(MRI, train=False)
    assert torch.equal(t(image), t(image))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_train_transform_keeps_shape_and_augments(name):
    preset = PRESETS[name]
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (preset.channels, 40, 40), dtype=torch.uint8, generator=g)
    train_t, eval_t = build_transform(preset, train=True), build_transform(preset, train=False)
    torch.manual_seed(0)
    outs = [train_t(image) for _ in range(8)]
    assert all(o.shape == image.shape and o.dtype == torch.float32 for o in outs)
    assert any(not torch.equal(o, eval_t(image)) for o in outs)




def test_histology_colon_rotates_by_right_angles_only_and_jitters_colour() -> None:
    preset = get_preset("histology-colon")
    assert preset.channels == 3 and preset.classes == ("colon_aca", "colon_n") and preset.rotation == 0.0
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    plain = build_transform(preset, train=False)
    rotations = [plain(torch.rot90(image, k, dims=(1, 2))) for k in range(4)]
    only_rotation = build_transform(dataclasses.replace(preset, flips=False, color_jitter=0.0), train=True)
    torch.manual_seed(0)
    outputs = [only_rotation(image) for _ in range(24)]
    seen = {next(k for k, r in enumerate(rotations) if torch.equal(out, r)) for out in outputs}
    assert seen == {0, 1, 2, 3}  # every lossless rotation, nothing in between
    only_jitter = build_transform(dataclasses.replace(preset, flips=False, right_angles=False), train=True)
    jittered = only_jitter(image)
    assert jittered.shape == rotations[0].shape and not torch.equal(jittered, rotations[0])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_augmentation_strength_zero_trains_on_the_evaluation_transform(name: str) -> None:
    preset = preset_for(parse_run_config({"dataset": name, "augmentation-strength": 0.0}))
    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (preset.channels, 40, 40), dtype=torch.uint8, generator=g)
    torch.manual_seed(0)
    assert all(torch.equal(build_transform(preset, train=True)(image), build_transform(preset, train=False)(image))
               for _ in range(8))  # fmt: skip


def test_augmentation_strength_scales_rotation_shift_zoom_and_colour_jitter() -> None:
    assert preset_for(parse_run_config({"dataset": "brain-mri", "augmentation-strength": 1.0})) == MRI  # its own
    halved = preset_for(parse_run_config({"dataset": "brain-mri"}))  # the default: half the preset's
    assert (halved.rotation, halved.shift) == (MRI.rotation / 2, MRI.shift / 2) and halved.flips == MRI.flips
    doubled = build_transform(preset_for(parse_run_config({"dataset": "brain-mri", "augmentation-strength": 2.0})),
                              train=True).transforms  # fmt: skip
    affine = next(t for t in doubled if isinstance(t, v2.RandomAffine))
    assert affine.degrees == [-40.0, 40.0] and affine.translate == (0.2, 0.2)
    assert affine.scale == pytest.approx((0.8, 1.2))
    assert sum(isinstance(t, (v2.RandomHorizontalFlip, v2.RandomVerticalFlip)) for t in doubled) == 2
    colon = preset_for(parse_run_config({"dataset": "histology-colon", "augmentation-strength": 3.0}))
    jitter = next(t for t in build_transform(colon, train=True).transforms if isinstance(t, v2.ColorJitter))
    assert jitter.brightness == pytest.approx((0.7, 1.3)) and jitter.hue == pytest.approx((-0.075, 0.075))
