"""Tests for common.config: defaults, overrides, one-line errors and the pyproject mirror."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.config import ConfigError, RunConfig, parse_run_config
from common.presets import PRESETS

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

# The documented defaults, written out by hand (not read from the model).
DEFAULTS = {
    "num-server-rounds": 20,
    "fraction-train": 1.0,
    "fraction-evaluate": 1.0,
    "min-train-nodes": 2,
    "min-evaluate-nodes": 2,
    "local-epochs": 0.25,
    "local-steps": 0,
    "batch-size": 32,
    "learning-rate": 1e-3,
    "optimizer": "adam",
    "momentum": 0.9,
    "weight-decay": 0.0,
    "dataset": "brain-mri",
    "classes": "",
    "data-root": "data/samples/brain-mri",
    "image-size": 96,
    "partitioner": "dirichlet",
    "dirichlet-alpha": 0.5,
    "local-val-fraction": 0.1,
    "model": "resnet18",
    "pretrained-weights": "",
    "train-from-block": 0,
    "trainable-params": "all",
    "device": "auto",
    "precision": "auto",
    "decoded-cache-mb": 4096,
    "he-enabled": False,
    "he-keys-dir": "",
    "he-secret-context": "",
    "he-workers": 2,
    "dp-enabled": False,
    "dp-target-epsilon": 8.0,
    "dp-delta": 0.0,
    "dp-max-grad-norm": 1.0,
    "dp-noise-multiplier": 0.0,
    "dp-sample-rate": 0.5,
    "dp-augmentation-multiplicity": 1,
    "dp-clipping": "clip",
    "dp-ema-decay": 0.9,
    "dp-optimizer": "sgd",
    "dp-learning-rate": 0.2,
    "dp-lr-schedule": "run",
    "seed": 42,
    "output-dir": "runs",
    "run-name": "",
    "round-timeout": 600.0,
    "resume-from": "",
    "strategy": "auto",
    "server-learning-rate": 1.0,
    "server-momentum": 0.5,
    "proximal-mu": 0.0,
    "label-smoothing": 0.0,
    "trim-fraction": 0.2,
    "num-malicious-nodes": 1,
    "update-norm-limit": 2.5,
    "optimizer-state": "keep",
    "lr-schedule": "cosine",
    "lr-step-rounds": "",
    "lr-step-factor": 0.1,
    "class-weights": "none",
    "lr-warmup-rounds": 4,
    "norm-layer": "batch",
    "norm-groups": 32,
    "weight-standardization": False,
    "batchnorm-freeze": 0.0,
    "feature-standardization": False,
    "loss": "auto",
    "task": "auto",
    "label-threshold": "0.5",
    "early-stopping-patience": 0,
    "calibrate": True,
    "target-sensitivity": 0.0,
    "local-baseline": False,
}


def _error(values: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_run_config(values)
    message = str(info.value)
    assert "\n" not in message, f"message is not one line: {message!r}"
    assert isinstance(info.value, ValueError)
    return message


def _assert_names(message: str, key: str, value: object, *expected: str) -> None:
    assert repr(key) in message, message
    given = repr(value)
    if given.startswith("'"):
        assert given in message, message
    else:  # a number or bool appears as a token of its own, not e.g. as the "0" of "0.5"
        assert re.search(rf"(?<![\w.]){re.escape(given)}(?![\w.])", message), message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ---------------------------------------------------------------- defaults and overrides


def test_empty_config_gives_documented_defaults():
    cfg = parse_run_config({})
    assert cfg.to_run_config() == DEFAULTS
    assert cfg == RunConfig()


def test_attribute_names_are_snake_case_of_keys():
    cfg = parse_run_config({})
    for key, value in DEFAULTS.items():
        assert getattr(cfg, key.replace("-", "_")) == value


def test_valid_overrides_are_applied():
    overrides = {
        "num-server-rounds": 7,
        "fraction-train": 0.5,
        "fraction-evaluate": 0.0,
        "min-evaluate-nodes": 0,
        "batch-size": 4096,
        "learning-rate": 1,  # an int is a valid number
        "optimizer": "sgd",
        "momentum": 0.0,
        "dataset": "histology",
        "classes": "x,y",
        "image-size": 32,
        "partitioner": "iid",
        "local-val-fraction": 0.5,
        "model": "cnn3",
        "device": "cpu",
        "he-enabled": True,
        "he-workers": 4,
        "seed": 0,
        "run-name": "trial",
    }
    cfg = parse_run_config(overrides)
    resolved = cfg.to_run_config()
    for key, value in overrides.items():
        assert resolved[key] == value
    assert isinstance(cfg.learning_rate, float)
    # untouched keys keep their defaults
    for key in set(DEFAULTS) - set(overrides):
        assert resolved[key] == DEFAULTS[key]


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_optimizer_literal_is_valid(optimizer):
    assert parse_run_config({"optimizer": optimizer}).optimizer == optimizer


@pytest.mark.parametrize("dataset", sorted(PRESETS))
def test_every_preset_is_a_valid_dataset(dataset):
    assert parse_run_config({"dataset": dataset}).dataset == dataset


def test_to_run_config_round_trips():
    cfg = parse_run_config({"dataset": "chest-xray", "batch-size": 8, "classes": "a,b,c"})
    assert parse_run_config(cfg.to_run_config()) == cfg


# ---------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch-size", "32"),
        ("num-server-rounds", "3"),
        ("seed", "42"),
    ],
)
def test_string_for_int_is_rejected(key, value):
    _assert_names(_error({key: value}), key, value, "an integer")


@pytest.mark.parametrize("key", ["batch-size", "seed"])
def test_bool_for_int_is_rejected(key):
    _assert_names(_error({key: True}), key, True, "not a boolean")


@pytest.mark.parametrize("key", ["learning-rate", "momentum", "local-epochs"])
def test_bool_for_float_is_rejected(key):
    _assert_names(_error({key: False}), key, False, "not a boolean")


@pytest.mark.parametrize("value", [1.5, 2.0])
def test_float_for_int_is_rejected(value):
    _assert_names(_error({"batch-size": value}), "batch-size", value, "an integer")


@pytest.mark.parametrize("value", ["true", 1, 0])
def test_non_bool_for_bool_is_rejected(value):
    _assert_names(_error({"he-enabled": value}), "he-enabled", value, "true or false")


def test_int_for_string_is_rejected():
    _assert_names(_error({"run-name": 3}), "run-name", 3, "a string")


def test_string_for_float_is_rejected():
    _assert_names(_error({"learning-rate": "0.01"}), "learning-rate", "0.01", "a number")


@pytest.mark.parametrize("key", ["weight-decay", "dirichlet-alpha"])
def test_non_finite_float_is_rejected(key):
    _error({key: math.inf})


# ---------------------------------------------------------------- out of range


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("batch-size", 0, "a value >= 1"),
        ("batch-size", 4097, "a value <= 4096"),
        ("learning-rate", -1, "a value > 0"),
        ("learning-rate", 0.0, "a value > 0"),
        ("fraction-train", 0, "a value > 0"),
        ("fraction-train", 1.5, "a value <= 1"),
        ("fraction-evaluate", -0.1, "a value >= 0"),
        ("momentum", 1.0, "a value < 1"),
        ("image-size", 31, "a value >= 32"),
        ("local-val-fraction", 0.6, "a value <= 0.5"),
        ("seed", -1, "a value >= 0"),
        ("dirichlet-alpha", 0, "a value > 0"),
        ("num-server-rounds", 0, "a value >= 1"),
        ("he-workers", 0, "a value >= 1"),
        ("he-workers", 65, "a value <= 64"),
        ("dp-target-epsilon", 0.0, "a value > 0"),
        ("dp-delta", 1.0, "a value < 1"),
        ("dp-max-grad-norm", -1.0, "a value > 0"),
        ("round-timeout", 0.0, "a value > 0"),
        ("round-timeout", "soon", "a number"),
        ("resume-from", 3, "a string"),
        ("dp-noise-multiplier", -0.5, "a value >= 0"),
        ("dp-enabled", "yes", "true or false"),
        (
            "strategy",
            "fedsgd",
            "one of 'auto', 'fedavg', 'fedprox', 'fedavgm', 'fedadam', 'fedyogi', 'fedadagrad', 'fedmedian', "
            "'fedtrimmedavg', 'krum', 'multikrum', 'bulyan'",
        ),
        ("trim-fraction", 0.0, "a value > 0"),
        ("trim-fraction", 0.5, "a value < 0.5"),
        ("num-malicious-nodes", -1, "a value >= 0"),
        ("num-malicious-nodes", 1.5, "an integer"),
        ("update-norm-limit", -1.0, "a value >= 0"),
        ("update-norm-limit", True, "not a boolean"),
        ("server-learning-rate", 0.0, "a value > 0"),
        ("server-momentum", 1.0, "a value < 1"),
        ("proximal-mu", -0.1, "a value >= 0"),
        ("optimizer-state", "persist", "one of 'reset' or 'keep'"),
        ("lr-schedule", "linear", "one of 'constant', 'cosine' or 'step'"),
        ("lr-step-rounds", "80,40", "increasing list of rounds >= 1"),
        ("lr-step-rounds", "eighty", "increasing list of rounds >= 1"),
        ("lr-step-factor", 0.0, "a value > 0"),
        ("lr-step-factor", 2.0, "a value <= 1"),
        ("class-weights", "inverse", "one of 'none' or 'balanced'"),
        ("label-smoothing", 1.0, "a value < 1"),
        ("label-smoothing", -0.1, "a value >= 0"),
        ("lr-warmup-rounds", -1, "a value >= 0"),
        ("lr-warmup-rounds", 1.5, "an integer"),
        ("norm-layer", "layer", "one of 'batch' or 'group'"),
        ("local-steps", -1, "a value >= 0"),
        ("local-steps", 2.5, "an integer"),
        ("loss", "focal", "one of 'auto', 'cross-entropy' or 'logit-adjusted'"),
        ("local-epochs", 0, "a value > 0"),
        ("local-epochs", -0.25, "a value > 0"),
        ("local-epochs", 1001, "a value <= 1000"),
        ("train-from-block", -1, "a value >= 0"),
        ("train-from-block", 1.0, "an integer"),
        ("trainable-params", "bias", "one of 'all' or 'norm'"),
        ("dp-sample-rate", -0.1, "a value >= 0"),
        ("dp-sample-rate", 1.5, "a value <= 1"),
        ("dp-augmentation-multiplicity", 0, "a value >= 1"),
        ("dp-augmentation-multiplicity", 65, "a value <= 64"),
        ("dp-augmentation-multiplicity", True, "not a boolean"),
        ("dp-clipping", "automatic", "one of 'clip' or 'normalize'"),
        ("dp-lr-schedule", "cosine", "one of 'constant' or 'run'"),
        ("dp-ema-decay", 1.0, "a value < 1"),
        ("dp-ema-decay", -0.5, "a value >= 0"),
        ("dp-optimizer", "lamb", "one of 'auto', 'sgd', 'adam' or 'adamw'"),
        ("dp-learning-rate", -1.0, "a value >= 0"),
        ("dp-learning-rate", 11.0, "a value <= 10"),
        ("norm-groups", 0, "a value >= 1"),
        ("norm-groups", 2048, "a value <= 1024"),
        ("weight-standardization", 1, "true or false"),
        ("batchnorm-freeze", 1.0, "a value < 1"),
        ("batchnorm-freeze", -0.5, "a value >= 0"),
    ],
)
def test_out_of_range_is_rejected(key, value, expected):
    _assert_names(_error({key: value}), key, value, expected)


@pytest.mark.parametrize("strategy", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_a_server_optimiser_is_refused_under_encryption(strategy):
    message = _error({"he-enabled": True, "strategy": strategy})
    _assert_names(message, "strategy", strategy, "under he-enabled", "not a weighted sum", "'fedavg', 'fedprox'")


@pytest.mark.parametrize(("keys", "step"), [
    ({}, "fedavgm"), ({"he-enabled": True}, "fedavg"), ({"strategy": "fedprox"}, "fedprox"),
    ({"strategy": "fedavg"}, "fedavg"), ({"he-enabled": True, "strategy": "fedprox"}, "fedprox"),
])
def test_auto_is_server_momentum_in_plaintext_and_fedavg_under_encryption(keys, step):
    assert parse_run_config(keys).server_step == step


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"])
def test_a_robust_strategy_is_refused_under_encryption(strategy):
    message = _error({"he-enabled": True, "strategy": strategy, "min-train-nodes": 20})
    _assert_names(message, "strategy", strategy, "under he-enabled", "must look at each hospital's update")


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
    message = _error({**keys, "min-train-nodes": fewest - 1})
    _assert_names(message, "min-train-nodes", fewest - 1, f">= {fewest} for strategy {keys['strategy']!r}", rule)
    assert parse_run_config({**keys, "min-train-nodes": fewest}).min_train_nodes == fewest


def test_high_server_momentum_needs_a_looser_guard_or_none():
    message = _error({"strategy": "fedavgm", "server-momentum": 0.9})
    _assert_names(message, "update-norm-limit", 2.5, ">= 8 or 0 (off) with server-momentum 0.9")
    for keys in ({"update-norm-limit": 8.0}, {"update-norm-limit": 0.0}, {"server-momentum": 0.5}):
        assert parse_run_config({"strategy": "fedavgm", "server-momentum": 0.9, **keys}).server_step == "fedavgm"
    assert parse_run_config({"strategy": "fedavg", "server-momentum": 0.9}).update_norm_limit == 2.5


def test_the_robust_settings_mean_nothing_to_other_strategies():
    assert parse_run_config({"num-malicious-nodes": 5, "trim-fraction": 0.1}).min_train_nodes == 2


def test_step_rounds_and_the_step_schedule_go_together():
    _assert_names(_error({"lr-schedule": "step"}), "lr-step-rounds", "", "the rounds after which", "'80,120'")
    _assert_names(_error({"lr-step-rounds": "5"}), "lr-step-rounds", "5", "unless lr-schedule is 'step'")
    assert parse_run_config({"lr-schedule": "step", "lr-step-rounds": "3,6"}).lr_step_rounds == "3,6"


def test_class_weights_are_refused_under_dp():
    message = _error({"dp-enabled": True, "class-weights": "balanced"})
    _assert_names(message, "class-weights", "balanced", "'none' under dp-enabled")


def test_label_smoothing_is_refused_under_dp_and_for_multilabel_data():
    _assert_names(_error({"dp-enabled": True, "label-smoothing": 0.1}), "label-smoothing", 0.1, "under dp-enabled")
    message = _error({"dataset": "nih-chestxray", "label-smoothing": 0.1})
    _assert_names(message, "label-smoothing", 0.1, "0.0 under task 'multilabel'")
    assert parse_run_config({"label-smoothing": 0.1}).label_smoothing == 0.1


def test_the_proximal_term_is_refused_under_dp_and_meets_any_other_server_step():
    message = _error({"dp-enabled": True, "proximal-mu": 0.01})
    _assert_names(message, "proximal-mu", 0.01, "0.0 under dp-enabled", "proximal term")
    assert parse_run_config({"proximal-mu": 0.01}).server_step == "fedavgm"


def test_logit_adjustment_is_refused_under_dp_and_auto_is_cross_entropy_there():
    message = _error({"dp-enabled": True, "loss": "logit-adjusted"})
    _assert_names(message, "loss", "logit-adjusted", "'auto' or 'cross-entropy' under dp-enabled", "private")
    assert not parse_run_config({"dp-enabled": True}).logit_adjusted
    assert parse_run_config({}).logit_adjusted and parse_run_config({"loss": "cross-entropy"}).logit_adjusted is False


def test_train_from_block_names_the_models_blocks():
    message = _error({"model": "resnet18", "train-from-block": 6})
    _assert_names(message, "train-from-block", 6, "0 to 5 for model 'resnet18'", "stem, layer1, layer2")
    assert parse_run_config({"model": "cnn3", "train-from-block": 3}).train_from_block == 3


@pytest.mark.parametrize(
    ("key", "value", "expected"), [("norm-groups", 16, "32"), ("weight-standardization", True, "false")]
)
def test_group_norm_options_need_the_group_norm_variant(key, value, expected):
    _assert_names(_error({key: value}), key, value, f"{expected} unless the model is the GroupNorm variant")
    for variant in ({"dp-enabled": True}, {"norm-layer": "group"}):
        assert parse_run_config({key: value, **variant}).to_run_config()[key] == value


@pytest.mark.parametrize("variant", [{"dp-enabled": True}, {"norm-layer": "group"}])
def test_batchnorm_freeze_needs_batchnorm(variant):
    message = _error({"batchnorm-freeze": 0.5, **variant})
    _assert_names(message, "batchnorm-freeze", 0.5, "0.0 unless the model has BatchNorm")
    assert parse_run_config({"batchnorm-freeze": 0.5}).batchnorm_freeze == 0.5


def test_the_dp_recipe_keys_are_kept_without_dp():
    """A no-DP baseline may share the DP run's config: the recipe keys then train nothing differently."""
    recipe = {"dp-sample-rate": 0.5, "dp-augmentation-multiplicity": 8, "dp-clipping": "normalize",
              "dp-ema-decay": 0.99, "dp-optimizer": "sgd", "dp-learning-rate": 2.0}  # fmt: skip
    assert {k: parse_run_config(recipe).to_run_config()[k] for k in recipe} == recipe


def test_local_steps_are_refused_under_dp():
    message = _error({"dp-enabled": True, "local-steps": 10})
    _assert_names(message, "local-steps", 10, "0 under dp-enabled", "Poisson")


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox"])
def test_weighted_sums_run_under_encryption(strategy):
    assert parse_run_config({"he-enabled": True, "strategy": strategy}).strategy == strategy


@pytest.mark.parametrize("key", ["data-root", "output-dir"])
def test_empty_required_path_is_rejected(key):
    _assert_names(_error({key: ""}), key, "", "non-empty")


# ---------------------------------------------------------------- literals and registries


def test_bad_optimizer_lists_the_choices():
    _assert_names(_error({"optimizer": "rmsprop"}), "optimizer", "rmsprop", "'sgd'", "'adam'", "'adamw'")


def test_bad_partitioner_lists_the_choices():
    _assert_names(_error({"partitioner": "foo"}), "partitioner", "foo", "'iid'", "'dirichlet'", "'natural'")


def test_bad_device_lists_the_choices():
    _assert_names(_error({"device": "tpu"}), "device", "tpu", "'auto'", "'cpu'", "'cuda'")


def test_unknown_dataset_lists_the_presets():
    message = _error({"dataset": "xray"})
    _assert_names(message, "dataset", "xray", *(repr(name) for name in PRESETS))


def test_unknown_model_lists_the_architectures():
    message = _error({"model": "vit"})
    _assert_names(message, "model", "vit", "'cnn3'", "'resnet18'", "'densenet121'")


# ---------------------------------------------------------------- cross-field checks


@pytest.mark.parametrize(("model", "minimum"), [("inception_v3", 75), ("alexnet", 63)])
def test_image_size_below_model_minimum_is_rejected(model, minimum):
    message = _error({"model": model, "image-size": minimum - 1})
    _assert_names(message, "image-size", minimum - 1, str(minimum), repr(model))
    assert parse_run_config({"model": model, "image-size": minimum}).image_size == minimum


def test_small_image_size_is_fine_for_other_models():
    assert parse_run_config({"model": "cnn3", "image-size": 32}).image_size == 32


# ---------------------------------------------------------------- classes


@pytest.mark.parametrize("value", [",,", "a,", ",a,b", "a,,b"])
def test_classes_with_empty_names_are_rejected(value):
    _assert_names(_error({"classes": value}), "classes", value, "non-empty")


@pytest.mark.parametrize("value", ["a,a", "a, a", "x,y,x"])
def test_duplicate_classes_are_rejected(value):
    _assert_names(_error({"classes": value}), "classes", value, "distinct")


def test_single_class_is_rejected():
    _assert_names(_error({"classes": "tumor"}), "classes", "tumor", "at least two")


def test_class_names_come_from_the_preset():
    assert parse_run_config({}).class_names == ("glioma", "meningioma", "notumor", "pituitary")
    assert parse_run_config({"dataset": "chest-xray"}).class_names == ("NORMAL", "PNEUMONIA")
    assert parse_run_config({"dataset": "histology"}).class_names[0] == "normal"


def test_class_names_come_from_the_classes_override():
    cfg = parse_run_config({"dataset": "brain-mri", "classes": " benign , malignant ,other"})
    assert cfg.class_names == ("benign", "malignant", "other")


# ---------------------------------------------------------------- unknown keys


def test_unknown_key_with_close_match_suggests_it():
    message = _error({"learning-rat": 0.1})
    assert "'learning-rat'" in message
    assert "did you mean 'learning-rate'" in message


def test_snake_case_key_suggests_kebab_case():
    message = _error({"batch_size": 8})
    assert "'batch_size'" in message and "'batch-size'" in message


def test_unknown_key_without_close_match_lists_valid_keys():
    message = _error({"zzzzqqq": 1})
    assert "'zzzzqqq'" in message
    assert "did you mean" not in message
    for key in DEFAULTS:
        assert key in message


def test_source_prefixes_the_message():
    with pytest.raises(ConfigError, match=r"^pyproject\.toml: "):
        parse_run_config({"batch-size": 0}, source="pyproject.toml")


def test_several_bad_values_give_one_line_each():
    with pytest.raises(ConfigError) as info:
        parse_run_config({"batch-size": 0, "optimizer": "rmsprop"})
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert any("'batch-size'" in line for line in lines)
    assert any("'optimizer'" in line for line in lines)


# ---------------------------------------------------------------- frozen model


def test_run_config_is_frozen():
    cfg = parse_run_config({})
    with pytest.raises(ValidationError):
        cfg.batch_size = 8  # type: ignore[misc]
    assert cfg.batch_size == 32
    hash(cfg)  # frozen models are hashable (used as an lru_cache key)


def test_extra_fields_are_forbidden_in_direct_construction():
    with pytest.raises(ValidationError):
        RunConfig(not_a_key=1)  # type: ignore[call-arg]


# ---------------------------------------------------------------- pyproject mirror


def _pyproject_config() -> dict:
    with PYPROJECT.open("rb") as fh:
        return tomllib.load(fh)["tool"]["flwr"]["app"]["config"]


def test_pyproject_keys_are_exactly_the_run_config_keys():
    keys = {field.alias or name for name, field in RunConfig.model_fields.items()}
    assert set(_pyproject_config()) == keys
    assert keys == set(DEFAULTS)


def test_pyproject_config_validates():
    parse_run_config(_pyproject_config(), source="pyproject.toml")


@pytest.mark.parametrize(
    "key",
    list(DEFAULTS),
)
def test_pyproject_value_equals_run_config_default(key):
    from_pyproject = parse_run_config(_pyproject_config()).to_run_config()
    assert from_pyproject[key] == RunConfig().to_run_config()[key]


@pytest.mark.parametrize(
    ("keys", "why"),
    [
        ({"local-val-fraction": 0.0}, "unless the hospitals hold out validation images"),
        ({"dp-enabled": True}, "under dp-enabled"),
    ],
)
def test_a_local_baseline_without_validation_images_or_under_dp_is_refused(keys, why):
    message = _error({"local-baseline": True, **keys})
    _assert_names(message, "local-baseline", True, "expected false", why)
    assert "\n" not in message
