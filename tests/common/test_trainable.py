"""Which layers train: every architecture's blocks, and frozen blocks under DP-SGD and plain training."""

from __future__ import annotations

import pytest
import torch

from client.training import train_local
from common.architectures import ARCHITECTURES, BLOCKS
from common.config import parse_run_config
from common.data.images import ImageSet
from common.data.transforms import normalize
from common.experiment import initial_model, preset_for
from common.models import build_model
from common.privacy.compat import make_dp_compatible
from common.privacy.dpsgd import train_private
from common.trainable import block_of, freeze_blocks

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_parameter_is_in_one_block_and_the_blocks_follow_the_forward_order(arch: str) -> None:
    with torch.device("meta"):
        model = build_model(arch, num_classes=4, in_channels=1)
    names = [name for name, _ in model.named_parameters()]
    order = [block_of(name, arch) for name in names if not name.startswith("AuxLogits.")]  # a head off Mixed_6e
    assert order == sorted(order) and set(order) == set(range(len(BLOCKS[arch])))
    for name in names:
        prefixes = [p for _, block in BLOCKS[arch] for p in block if name.startswith(f"{p}.")]
        assert len(prefixes) == 1, (name, prefixes)


def _images(n: int) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g)
    return ImageSet(images, torch.randint(0, 4, (n,), generator=g), tuple(map(str, range(n))), ("a", "b", "c", "d"))


def test_frozen_blocks_do_not_change_and_are_not_in_the_dp_optimizer() -> None:
    model = make_dp_compatible(build_model("cnn3", num_classes=4, in_channels=1, seed=0))
    assert freeze_blocks(model, architecture="cnn3", train_from=2) == 6  # conv1 and conv2: weight, GN weight, bias
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_private(
        model, _images(10), transform=normalize([0.5], [0.25]), batch_size=4, epochs=1, lr=0.1, optimizer_name="adam",
        noise_multiplier=1.0, max_grad_norm=1.0, seed=0, device=torch.device("cpu"), keep_optimizer_state=True,
    )  # fmt: skip
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["features.8.weight", "features.9.weight", "features.9.bias", "classifier.weight",
                         "classifier.bias"]  # fmt: skip
    assert result.optimizer_state is not None
    assert result.optimizer_state["param_groups"][0]["params"] == list(range(len(trainable)))
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]) == (name not in trainable), name
    freeze_blocks(model, architecture="cnn3", train_from=0)  # a model reused by the next run trains whole again
    assert all(p.requires_grad for p in model.parameters())


def test_a_frozen_block_keeps_its_batch_norm_statistics_in_plain_training() -> None:
    cfg = parse_run_config({"model": "resnet18", "image-size": 32, "batch-size": 4, "local-steps": 2,
                            "train-from-block": 5})  # fmt: skip
    model = initial_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_local(model, _images(8), cfg=cfg, preset=preset_for(cfg), device=torch.device("cpu"), seed=0)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"fc.weight", "fc.bias"}  # not even layer4's running means moved
    with pytest.raises(ValueError, match="train_from = 6 is invalid; expected 0 to 5 for resnet18"):
        freeze_blocks(model, architecture="resnet18", train_from=6)


def test_norm_only_trains_the_norm_layers_of_the_trained_blocks_and_the_whole_head_under_dp() -> None:
    model = make_dp_compatible(build_model("resnet18", num_classes=4, in_channels=1, seed=0))
    freeze_blocks(model, architecture="resnet18", train_from=4, norm_only=True)
    # layer4 holds two BasicBlocks (bn1, bn2) and a downsample (conv, norm): five norm layers, weight and bias each
    expected = [f"layer4.{b}.{n}.{w}" for b, norms in ((0, ("bn1", "bn2", "downsample.1")), (1, ("bn1", "bn2")))
                for n in norms for w in ("weight", "bias")] + ["fc.weight", "fc.bias"]  # fmt: skip
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == sorted(expected)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_private(
        model, _images(10), transform=normalize([0.5], [0.25]), batch_size=4, epochs=1, lr=0.1, optimizer_name="sgd",
        noise_multiplier=1.0, max_grad_norm=1.0, seed=0, device=torch.device("cpu"), keep_optimizer_state=False,
    )  # fmt: skip
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(expected)


def test_norm_only_in_plain_training_leaves_the_convolutions_and_earlier_blocks_alone() -> None:
    cfg = parse_run_config({"model": "resnet18", "image-size": 32, "batch-size": 4, "local-steps": 2,
                            "train-from-block": 0, "trainable-params": "norm"})  # fmt: skip
    model = initial_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_local(model, _images(8), cfg=cfg, preset=preset_for(cfg), device=torch.device("cpu"), seed=0)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    convolutions = {k for k in before if k.endswith("weight") and before[k].dim() == 4}
    assert changed and not changed & convolutions
    assert {"fc.weight", "fc.bias", "bn1.weight", "bn1.running_mean"} <= changed  # BatchNorm trains, stats move
