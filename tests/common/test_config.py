"""Tests for common.config: defaults, overrides, one-line errors and the pyproject mirror."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
from config_errors import assert_names, config_error
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
    "augmentation-strength": 0.5,
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
    assert_names(config_error({key: value}), key, value, "an integer")


@pytest.mark.parametrize("key", ["batch-size", "seed"])
def test_bool_for_int_is_rejected(key):
    assert_names(config_error({key: True}), key, True, "not a boolean")


@pytest.mark.parametrize("key", ["learning-rate", "momentum", "local-epochs"])
def test_bool_for_float_is_rejected(key):
    assert_names(config_error({key: False}), key, False, "not a boolean")


@pytest.mark.parametrize("value", [1.5, 2.0])
def test_float_for_int_is_rejected(value):
    assert_names(config_error({"batch-size": value}), "batch-size", value, "an integer")


@pytest.mark.parametrize("value", ["true", 1, 0])
def test_non_bool_for_bool_is_rejected(value):
    assert_names(config_error({"he-enabled": value}), "he-enabled", value, "true or false")


def test_int_for_string_is_rejected():
    assert_names(config_error({"run-name": 3}), "run-name", 3, "a string")


def test_string_for_float_is_rejected():
    assert_names(config_error({"learning-rate": "0.01"}), "learning-rate", "0.01", "a number")


@pytest.mark.parametrize("key", ["weight-decay", "dirichlet-alpha"])
def test_non_finite_float_is_rejected(key):
    config_error({key: math.inf})


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
        ("augmentation-strength", -0.5, "a value >= 0"),
        ("augmentation-strength", 5, "a value <= 4"),
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
    assert_names(config_error({key: value}), key, value, expected)


@pytest.mark.parametrize("key", ["data-root", "output-dir"])
def test_empty_required_path_is_rejected(key):
    assert_names(config_error({key: ""}), key, "", "non-empty")


# ---------------------------------------------------------------- literals and registries


def test_bad_optimizer_lists_the_choices():
    assert_names(config_error({"optimizer": "rmsprop"}), "optimizer", "rmsprop", "'sgd'", "'adam'", "'adamw'")


def test_bad_partitioner_lists_the_choices():
    assert_names(config_error({"partitioner": "foo"}), "partitioner", "foo", "'iid'", "'dirichlet'", "'natural'")


def test_bad_device_lists_the_choices():
    assert_names(config_error({"device": "tpu"}), "device", "tpu", "'auto'", "'cpu'", "'cuda'")


def test_unknown_dataset_lists_the_presets():
    message = config_error({"dataset": "xray"})
    assert_names(message, "dataset", "xray", *(repr(name) for name in PRESETS))


def test_unknown_model_lists_the_architectures():
    message = config_error({"model": "vit"})
    assert_names(message, "model", "vit", "'cnn3'", "'resnet18'", "'densenet121'")


# ---------------------------------------------------------------- classes


@pytest.mark.parametrize("value", [",,", "a,", ",a,b", "a,,b"])
def test_classes_with_empty_names_are_rejected(value):
    assert_names(config_error({"classes": value}), "classes", value, "non-empty")


@pytest.mark.parametrize("value", ["a,a", "a, a", "x,y,x"])
def test_duplicate_classes_are_rejected(value):
    assert_names(config_error({"classes": value}), "classes", value, "distinct")


def test_single_class_is_rejected():
    assert_names(config_error({"classes": "tumor"}), "classes", "tumor", "at least two")


def test_class_names_come_from_the_preset():
    assert parse_run_config({}).class_names == ("glioma", "meningioma", "notumor", "pituitary")
    assert parse_run_config({"dataset": "chest-xray"}).class_names == ("NORMAL", "PNEUMONIA")
    assert parse_run_config({"dataset": "histology"}).class_names[0] == "normal"


def test_class_names_come_from_the_classes_override():
    cfg = parse_run_config({"dataset": "brain-mri", "classes": " benign , malignant ,other"})
    assert cfg.class_names == ("benign", "malignant", "other")


# ---------------------------------------------------------------- unknown keys


def test_unknown_key_with_close_match_suggests_it():
    message = config_error({"learning-rat": 0.1})
    assert "'learning-rat'" in message
    assert "did you mean 'learning-rate'" in message


def test_snake_case_key_suggests_kebab_case():
    message = config_error({"batch_size": 8})
    assert "'batch_size'" in message and "'batch-size'" in message


def test_unknown_key_without_close_match_lists_valid_keys():
    message = config_error({"zzzzqqq": 1})
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
    message = config_error({"local-baseline": True, **keys})
    assert_names(message, "local-baseline", True, "expected false", why)
    assert "\n" not in message
