"""Run-config keys that depend on each other: encryption, DP, server steps, norm layers and model limits."""

from __future__ import annotations

import pytest
from config_errors import assert_names, config_error

from common.config import parse_run_config


@pytest.mark.parametrize("strategy", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_a_server_optimiser_is_refused_under_encryption(strategy):
    message = config_error({"he-enabled": True, "strategy": strategy})
    assert_names(message, "strategy", strategy, "under he-enabled", "not a weighted sum", "'fedavg', 'fedprox'")


@pytest.mark.parametrize(("keys", "step"), [
    ({}, "fedavgm"), ({"he-enabled": True}, "fedavg"), ({"strategy": "fedprox"}, "fedprox"),
    ({"strategy": "fedavg"}, "fedavg"), ({"he-enabled": True, "strategy": "fedprox"}, "fedprox"),
])
def test_auto_is_server_momentum_in_plaintext_and_fedavg_under_encryption(keys, step):
    assert parse_run_config(keys).server_step == step


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"])
def test_a_robust_strategy_is_refused_under_encryption(strategy):
    message = config_error({"he-enabled": True, "strategy": strategy, "min-train-nodes": 20})
    assert_names(message, "strategy", strategy, "under he-enabled", "must look at each hospital's update")


@pytest.mark.parametrize(
    ("keys", "fewest", "rule"),
    [
        ({"strategy": "fedmedian"}, 3, "the median of two updates is their mean"),
        ({"strategy": "fedtrimmedavg"}, 5, "trim-fraction 0.2 must cut at least one update from each end"),
        ({"strategy": "fedtrimmedavg", "trim-fraction": 0.34}, 3, "trim-fraction 0.34 must cut at least one"),
        ({"strategy": "krum"}, 5, "Krum needs n > 2f + 2 with f = num-malicious-nodes = 1"),
        ({"strategy": "multikrum", "num-malicious-nodes": 0}, 3, "Krum needs n > 2f + 2 with f = num-malicious-nodes"),
        ({"strategy": "bulyan", "num-malicious-nodes": 2}, 11, "Bulyan needs n >= 4f + 3 with f = num-malicious-nodes"),
    ],
)
def test_a_robust_strategy_needs_enough_hospitals(keys, fewest, rule):
    message = config_error({**keys, "min-train-nodes": fewest - 1})
    assert_names(message, "min-train-nodes", fewest - 1, f">= {fewest} for strategy {keys['strategy']!r}", rule)
    assert parse_run_config({**keys, "min-train-nodes": fewest}).min_train_nodes == fewest


def test_high_server_momentum_needs_a_looser_guard_or_none():
    message = config_error({"strategy": "fedavgm", "server-momentum": 0.9})
    assert_names(message, "update-norm-limit", 2.5, ">= 8 or 0 (off) with server-momentum 0.9")
    for keys in ({"update-norm-limit": 8.0}, {"update-norm-limit": 0.0}, {"server-momentum": 0.5}):
        assert parse_run_config({"strategy": "fedavgm", "server-momentum": 0.9, **keys}).server_step == "fedavgm"
    assert parse_run_config({"strategy": "fedavg", "server-momentum": 0.9}).update_norm_limit == 2.5


def test_the_robust_settings_mean_nothing_to_other_strategies():
    assert parse_run_config({"num-malicious-nodes": 5, "trim-fraction": 0.1}).min_train_nodes == 2


def test_step_rounds_and_the_step_schedule_go_together():
    assert_names(config_error({"lr-schedule": "step"}), "lr-step-rounds", "", "the rounds after which", "'80,120'")
    assert_names(config_error({"lr-step-rounds": "5"}), "lr-step-rounds", "5", "unless lr-schedule is 'step'")
    assert parse_run_config({"lr-schedule": "step", "lr-step-rounds": "3,6"}).lr_step_rounds == "3,6"


def test_class_weights_are_refused_under_dp():
    message = config_error({"dp-enabled": True, "class-weights": "balanced"})
    assert_names(message, "class-weights", "balanced", "'none' under dp-enabled")


def test_label_smoothing_is_refused_under_dp_and_for_multilabel_data():
    assert_names(config_error({"dp-enabled": True, "label-smoothing": 0.1}), "label-smoothing", 0.1, "under dp-enabled")
    message = config_error({"dataset": "nih-chestxray", "label-smoothing": 0.1})
    assert_names(message, "label-smoothing", 0.1, "0.0 under task 'multilabel'")
    assert parse_run_config({"label-smoothing": 0.1}).label_smoothing == 0.1


def test_the_proximal_term_is_refused_under_dp_and_meets_any_other_server_step():
    message = config_error({"dp-enabled": True, "proximal-mu": 0.01})
    assert_names(message, "proximal-mu", 0.01, "0.0 under dp-enabled", "proximal term")
    assert parse_run_config({"proximal-mu": 0.01}).server_step == "fedavgm"


def test_logit_adjustment_is_refused_under_dp_and_auto_is_cross_entropy_there():
    message = config_error({"dp-enabled": True, "loss": "logit-adjusted"})
    assert_names(message, "loss", "logit-adjusted", "'auto' or 'cross-entropy' under dp-enabled", "private")
    assert not parse_run_config({"dp-enabled": True}).logit_adjusted
    assert parse_run_config({}).logit_adjusted and parse_run_config({"loss": "cross-entropy"}).logit_adjusted is False


def test_train_from_block_names_the_models_blocks():
    message = config_error({"model": "resnet18", "train-from-block": 6})
    assert_names(message, "train-from-block", 6, "0 to 5 for model 'resnet18'", "stem, layer1, layer2")
    assert parse_run_config({"model": "cnn3", "train-from-block": 3}).train_from_block == 3


@pytest.mark.parametrize(
    ("key", "value", "expected"), [("norm-groups", 16, "32"), ("weight-standardization", True, "false")]
)
def test_group_norm_options_need_the_group_norm_variant(key, value, expected):
    assert_names(config_error({key: value}), key, value, f"{expected} unless the model is the GroupNorm variant")
    for variant in ({"dp-enabled": True}, {"norm-layer": "group"}):
        assert parse_run_config({key: value, **variant}).to_run_config()[key] == value


@pytest.mark.parametrize("variant", [{"dp-enabled": True}, {"norm-layer": "group"}])
def test_batchnorm_freeze_needs_batchnorm(variant):
    message = config_error({"batchnorm-freeze": 0.5, **variant})
    assert_names(message, "batchnorm-freeze", 0.5, "0.0 unless the model has BatchNorm")
    assert parse_run_config({"batchnorm-freeze": 0.5}).batchnorm_freeze == 0.5


def test_the_dp_recipe_keys_are_kept_without_dp():
    """A no-DP baseline may share the DP run's config: the recipe keys then train nothing differently."""
    recipe = {"dp-sample-rate": 0.5, "dp-augmentation-multiplicity": 8, "dp-clipping": "normalize",
              "dp-ema-decay": 0.99, "dp-optimizer": "sgd", "dp-learning-rate": 2.0}  # fmt: skip
    assert {k: parse_run_config(recipe).to_run_config()[k] for k in recipe} == recipe


def test_local_steps_are_refused_under_dp():
    message = config_error({"dp-enabled": True, "local-steps": 10})
    assert_names(message, "local-steps", 10, "0 under dp-enabled", "Poisson")


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox"])
def test_weighted_sums_run_under_encryption(strategy):
    assert parse_run_config({"he-enabled": True, "strategy": strategy}).strategy == strategy




@pytest.mark.parametrize(("model", "minimum"), [("inception_v3", 75), ("alexnet", 63)])
def test_image_size_below_model_minimum_is_rejected(model, minimum):
    message = config_error({"model": model, "image-size": minimum - 1})
    assert_names(message, "image-size", minimum - 1, str(minimum), repr(model))
    assert parse_run_config({"model": model, "image-size": minimum}).image_size == minimum


def test_small_image_size_is_fine_for_other_models():
    assert parse_run_config({"model": "cnn3", "image-size": 32}).image_size == 32
