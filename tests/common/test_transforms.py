"""Tests for common.data.transforms: normalisation by hand, deterministic evaluation, training augmentation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from common.data.transforms import build_transform
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
