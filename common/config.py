"""The run configuration: validated once from Flower's ``run_config``, then frozen.

Keys are kebab-case, with Flower's own names where Flower has one. Every bad value is
reported as one line naming the key, the value given and what is expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from common.architectures import ARCHITECTURES, BLOCKS, IMAGENET_ARCHITECTURES, MIN_IMAGE_SIZE
from common.config_values import (
    ConfigError,
    Float,
    Int,
    KeyConflict,
    classes_list,
    kebab,
    one_of,
    rounds_list,
    thresholds_list,
)
from common.key_validation import validate_keys
from common.presets import PRESETS, positive_classes
from common.robust import ROBUST_STRATEGIES, updates_needed

__all__ = ["STRATEGIES", "WEIGHTED_SUM_STRATEGIES", "ConfigError", "RunConfig", "parse_run_config"]

STRATEGIES = ("auto", "fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", *ROBUST_STRATEGIES)
"""The server steps (Flower's strategies of the same names); ``auto`` is FedAvgM, or FedAvg under HE."""
WEIGHTED_SUM_STRATEGIES = ("fedavg", "fedprox")
"""The server steps that are a weighted sum of the updates, hence possible on ciphertexts."""


MOMENTUM_FOR_DEFAULT_LIMIT, LIMIT_UNDER_HIGH_MOMENTUM = 0.5, 8.0
"""Above this server momentum, ``update-norm-limit`` must be at least 8, or 0 (``_guard_fits_the_server_momentum``)."""


class RunConfig(BaseModel):
    """Every run-config key with its type, range and default (mirrors pyproject)."""

    model_config = ConfigDict(alias_generator=kebab, populate_by_name=True, extra="forbid", frozen=True)

    num_server_rounds: Int = Field(20, ge=1)
    fraction_train: Float = Field(1.0, gt=0.0, le=1.0)
    fraction_evaluate: Float = Field(1.0, ge=0.0, le=1.0)
    min_train_nodes: Int = Field(2, ge=1)
    min_evaluate_nodes: Int = Field(2, ge=0)
    local_epochs: Float = Field(0.25, gt=0.0, le=1000.0)
    local_steps: Int = Field(0, ge=0, le=1_000_000)
    batch_size: Int = Field(32, ge=1, le=4096)
    learning_rate: Float = Field(1e-3, gt=0.0, le=10.0)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    momentum: Float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: Float = Field(0.0, ge=0.0)
    dataset: Annotated[str, one_of(PRESETS)] = "brain-mri"
    classes: Annotated[str, AfterValidator(classes_list)] = ""
    data_root: str = Field("data/samples/brain-mri", min_length=1)
    image_size: Int = Field(96, ge=32, le=1024)
    partitioner: Literal["iid", "dirichlet", "natural"] = "dirichlet"
    dirichlet_alpha: Float = Field(0.5, gt=0.0)
    local_val_fraction: Float = Field(0.1, ge=0.0, le=0.5)
    model: Annotated[str, one_of(ARCHITECTURES)] = "resnet18"
    pretrained_weights: str = ""
    train_from_block: Int = Field(0, ge=0)
    trainable_params: Literal["all", "norm"] = "all"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    decoded_cache_mb: Int = Field(4096, ge=0)
    he_enabled: Annotated[bool, Field(strict=True)] = False
    he_keys_dir: str = ""
    he_secret_context: str = ""
    he_workers: Int = Field(2, ge=1, le=64)
    dp_enabled: Annotated[bool, Field(strict=True)] = False
    dp_target_epsilon: Float = Field(8.0, gt=0.0, le=100.0)
    dp_delta: Float = Field(0.0, ge=0.0, lt=1.0)
    dp_max_grad_norm: Float = Field(1.0, gt=0.0)
    dp_noise_multiplier: Float = Field(0.0, ge=0.0, le=100.0)
    dp_sample_rate: Float = Field(0.5, ge=0.0, le=1.0)
    dp_augmentation_multiplicity: Int = Field(1, ge=1, le=64)
    dp_clipping: Literal["clip", "normalize"] = "clip"
    dp_ema_decay: Float = Field(0.9, ge=0.0, lt=1.0)
    dp_optimizer: Literal["auto", "sgd", "adam", "adamw"] = "sgd"
    dp_learning_rate: Float = Field(0.2, ge=0.0, le=10.0)
    dp_lr_schedule: Literal["constant", "run"] = "run"
    seed: Int = Field(42, ge=0)
    output_dir: str = Field("runs", min_length=1)
    run_name: str = ""
    round_timeout: Float = Field(600.0, gt=0.0, le=86400.0)
    resume_from: str = ""
    strategy: Annotated[str, one_of(dict.fromkeys(STRATEGIES))] = "auto"
    server_learning_rate: Float = Field(1.0, gt=0.0, le=100.0)
    server_momentum: Float = Field(0.5, ge=0.0, lt=1.0)
    proximal_mu: Float = Field(0.0, ge=0.0, le=100.0)
    trim_fraction: Float = Field(0.2, gt=0.0, lt=0.5)
    num_malicious_nodes: Int = Field(1, ge=0)
    update_norm_limit: Float = Field(2.5, ge=0.0)
    optimizer_state: Literal["reset", "keep"] = "keep"
    lr_schedule: Literal["constant", "cosine", "step"] = "cosine"
    lr_step_rounds: Annotated[str, AfterValidator(rounds_list)] = ""
    lr_step_factor: Float = Field(0.1, gt=0.0, le=1.0)
    class_weights: Literal["none", "balanced"] = "none"
    label_smoothing: Float = Field(0.0, ge=0.0, lt=1.0)
    augmentation_strength: Float = Field(0.5, ge=0.0, le=4.0)
    lr_warmup_rounds: Int = Field(4, ge=0)
    norm_layer: Literal["batch", "group"] = "batch"
    norm_groups: Int = Field(32, ge=1, le=1024)
    batchnorm_freeze: Float = Field(0.0, ge=0.0, lt=1.0)
    weight_standardization: Annotated[bool, Field(strict=True)] = False
    feature_standardization: Annotated[bool, Field(strict=True)] = False
    loss: Literal["auto", "cross-entropy", "logit-adjusted"] = "auto"
    task: Literal["auto", "multiclass", "multilabel"] = "auto"
    label_threshold: Annotated[str, AfterValidator(thresholds_list)] = "0.5"
    early_stopping_patience: Int = Field(0, ge=0)
    calibrate: Annotated[bool, Field(strict=True)] = True
    target_sensitivity: Float = Field(0.0, ge=0.0, lt=1.0)
    local_baseline: Annotated[bool, Field(strict=True)] = False

    @model_validator(mode="after")
    def _image_size_fits_model(self) -> RunConfig:
        minimum = MIN_IMAGE_SIZE.get(self.model, 32)
        if self.image_size < minimum:
            raise KeyConflict("image-size", f"image-size >= {minimum} for model {self.model!r}")
        return self

    @model_validator(mode="after")
    def _block_exists(self) -> RunConfig:
        blocks = [name for name, _ in BLOCKS[self.model]]
        if self.train_from_block >= len(blocks):
            raise KeyConflict(
                "train-from-block", f"0 to {len(blocks) - 1} for model {self.model!r} (blocks: {', '.join(blocks)})"
            )
        return self

    @model_validator(mode="after")
    def _group_norm_options_need_group_norm(self) -> RunConfig:
        variant = "unless the model is the GroupNorm variant (norm-layer 'group' or dp-enabled)"
        if self.norm_groups != 32 and not (self.dp_enabled or self.norm_layer == "group"):
            raise KeyConflict("norm-groups", f"32 {variant}")
        if self.weight_standardization and not (self.dp_enabled or self.norm_layer == "group"):
            raise KeyConflict("weight-standardization", f"false {variant}")
        if self.batchnorm_freeze and (self.dp_enabled or self.norm_layer == "group"):
            raise KeyConflict("batchnorm-freeze", "0.0 unless the model has BatchNorm (norm-layer 'batch', no DP)")
        return self

    @model_validator(mode="after")
    def _starting_weights_fit(self) -> RunConfig:
        if self.feature_standardization and self.pretrained_weights in ("", "imagenet"):
            raise KeyConflict("feature-standardization", "false unless pretrained-weights names a pretrain model")
        if self.pretrained_weights == "imagenet" and self.model not in IMAGENET_ARCHITECTURES:
            why = f"{self.model!r} (torchvision has no ImageNet weights for it)"
            raise KeyConflict("pretrained-weights", f"a model directory or a local weights file for {why}")
        return self

    @model_validator(mode="after")
    def _precision_fits_device(self) -> RunConfig:
        if self.precision == "fp16" and self.device == "cpu":
            raise KeyConflict("precision", "'auto', 'fp32' or 'bf16' on device 'cpu' (fp16 autocast is for GPUs)")
        return self

    @model_validator(mode="after")
    def _server_step_fits_encryption(self) -> RunConfig:
        if not self.he_enabled or self.server_step in WEIGHTED_SUM_STRATEGIES:
            return self
        why = (
            "must look at each hospital's update, and the server only sees their encrypted sum "
            "(the hospitals' update-norm-limit guards an HE run)"
            if self.strategy in ROBUST_STRATEGIES
            else "is not a weighted sum, and the server only adds ciphertexts"
        )
        raise KeyConflict(
            "strategy",
            f"one of {', '.join(repr(s) for s in WEIGHTED_SUM_STRATEGIES)} under he-enabled: {self.strategy!r} {why}",
        )

    @model_validator(mode="after")
    def _robust_strategy_fits_the_hospitals(self) -> RunConfig:
        if self.strategy not in ROBUST_STRATEGIES:
            return self
        needed, rule = updates_needed(
            self.strategy, num_malicious_nodes=self.num_malicious_nodes, trim_fraction=self.trim_fraction
        )
        if self.min_train_nodes < needed:
            raise KeyConflict("min-train-nodes", f">= {needed} for strategy {self.strategy!r} ({rule})")
        return self

    @model_validator(mode="after")
    def _guard_fits_the_server_momentum(self) -> RunConfig:
        # Ordinary rounds reach step ratios of 1.17 at most with FedAvg and FedAvgM 0.5, but 3.78 with
        # momentum 0.9 (benchmarks/results/step_guard.json): a tight limit would stop such runs for nothing.
        if (
            self.server_step == "fedavgm"
            and self.server_momentum > MOMENTUM_FOR_DEFAULT_LIMIT
            and 0 < self.update_norm_limit < LIMIT_UNDER_HIGH_MOMENTUM
        ):
            raise KeyConflict(
                "update-norm-limit",
                f">= {LIMIT_UNDER_HIGH_MOMENTUM:g} or 0 (off) with server-momentum {self.server_momentum:g}: "
                "ordinary rounds reach step ratios of 3.8 with server momentum 0.9",
            )
        return self

    @model_validator(mode="after")
    def _step_rounds_fit_the_schedule(self) -> RunConfig:
        if self.lr_schedule == "step" and not self.lr_step_rounds:
            raise KeyConflict("lr-step-rounds", "the rounds after which the learning rate steps down, e.g. '80,120'")
        if self.lr_step_rounds and self.lr_schedule != "step":
            raise KeyConflict("lr-step-rounds", f"'' unless lr-schedule is 'step' (it is {self.lr_schedule!r})")
        return self

    @model_validator(mode="after")
    def _losses_fit_privacy(self) -> RunConfig:
        if self.dp_enabled and self.class_weights != "none":
            raise KeyConflict("class-weights", "'none' under dp-enabled (DP-SGD trains on the unweighted loss)")
        if self.dp_enabled and self.loss == "logit-adjusted":
            raise KeyConflict("loss", "'auto' or 'cross-entropy' under dp-enabled (its class frequencies are private)")
        if self.dp_enabled and self.label_smoothing:
            raise KeyConflict("label-smoothing", "0.0 under dp-enabled (DP-SGD trains on the plain loss)")
        if self.dp_enabled and self.proximal_mu:
            raise KeyConflict("proximal-mu", "0.0 under dp-enabled (DP-SGD trains without the proximal term)")
        return self

    @model_validator(mode="after")
    def _task_fits_dataset(self) -> RunConfig:
        multilabel = PRESETS[self.dataset].multilabel
        if self.task != "auto" and multilabel != (self.task == "multilabel"):
            kind = "'multilabel'" if multilabel else "'multiclass'"
            raise KeyConflict("task", f"{kind} for dataset {self.dataset!r}")
        if not multilabel:
            if self.label_threshold != "0.5":
                raise KeyConflict("label-threshold", "'0.5' unless task is 'multilabel' (argmax picks one class)")
            return self
        if self.loss == "logit-adjusted":
            raise KeyConflict(
                "loss", "'auto' or 'cross-entropy' under task 'multilabel' (it trains on BCE with logits)"
            )
        if self.class_weights != "none":
            raise KeyConflict("class-weights", "'none' under task 'multilabel' (it trains on BCE with logits)")
        if self.label_smoothing:
            raise KeyConflict("label-smoothing", "0.0 under task 'multilabel' (it trains on BCE with logits)")
        if len(self.label_threshold.split(",")) not in (1, len(self.class_names)):
            raise KeyConflict("label-threshold", f"one threshold, or one per label ({len(self.class_names)})")
        return self

    @model_validator(mode="after")
    def _patience_has_a_signal(self) -> RunConfig:
        if self.early_stopping_patience and (self.fraction_evaluate == 0 or self.local_val_fraction == 0):
            raise KeyConflict(
                "early-stopping-patience",
                "0 unless the hospitals hold out validation images (local-val-fraction > 0, fraction-evaluate > 0)",
            )
        return self

    @model_validator(mode="after")
    def _local_baseline_is_scored_outside_dp(self) -> RunConfig:
        if not self.local_baseline:
            return self
        if self.local_val_fraction == 0:
            raise KeyConflict(
                "local-baseline", "false unless the hospitals hold out validation images (local-val-fraction > 0)"
            )
        if self.dp_enabled:
            raise KeyConflict(
                "local-baseline",
                "false under dp-enabled (the local-only model's score would be released outside the privacy ledger)",
            )
        return self

    @model_validator(mode="after")
    def _operating_point_has_data_and_a_finding(self) -> RunConfig:
        if not self.target_sensitivity:
            return self
        if self.local_val_fraction == 0:
            raise KeyConflict(
                "target-sensitivity",
                "0 (unset) unless the hospitals hold out validation images (local-val-fraction > 0)",
            )
        if not self.multilabel and not self.positive_classes:
            raise KeyConflict(
                "target-sensitivity",
                f"0 (unset) for the classes {', '.join(self.class_names)}: dataset {self.dataset!r} names none of "
                "them abnormal, so there is no finding to detect",
            )
        return self

    @model_validator(mode="after")
    def _step_count_fits_privacy(self) -> RunConfig:
        if self.dp_enabled and self.local_steps:
            raise KeyConflict(
                "local-steps", "0 under dp-enabled (a DP-SGD round is local-epochs epochs of Poisson sampling)"
            )
        return self

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class list: the ``classes`` override, else the dataset preset's."""
        if self.classes:
            return tuple(c.strip() for c in self.classes.split(","))
        return PRESETS[self.dataset].classes

    @property
    def positive_classes(self) -> tuple[str, ...]:
        """The classes whose summed probability an operating point thresholds (single-label runs)."""
        return positive_classes(PRESETS[self.dataset], self.class_names)

    @property
    def server_step(self) -> str:
        """The strategy that runs: ``auto`` is FedAvgM (server momentum ``server-momentum``) in
        plaintext, and FedAvg under HE, where the server only adds ciphertexts."""
        if self.strategy != "auto":
            return self.strategy
        return "fedavg" if self.he_enabled else "fedavgm"

    @property
    def logit_adjusted(self) -> bool:
        """Whether hospitals train on logits plus the log of their own class frequencies.

        ``loss = "auto"`` is logit adjustment for one-class-per-image tasks (it corrects each
        hospital's label skew) and BCE for multi-label ones; under DP, cross-entropy (private frequencies).
        """
        return self.loss == "logit-adjusted" or (self.loss == "auto" and not self.multilabel and not self.dp_enabled)

    @property
    def multilabel(self) -> bool:
        """Whether images carry any number of labels (BCE) rather than one class (cross-entropy).

        The dataset preset decides; ``task`` ("auto" by default) may only restate it.
        """
        return PRESETS[self.dataset].multilabel

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The decision threshold of each label (multi-label runs)."""
        values = [float(v) for v in self.label_threshold.split(",")]
        return tuple(values * len(self.class_names)) if len(values) == 1 else tuple(values)

    def to_run_config(self) -> dict[str, Any]:
        """The resolved config as Flower-style kebab-case keys."""
        return self.model_dump(by_alias=True)


def parse_run_config(values: Mapping[str, Any], *, source: str = "run config") -> RunConfig:
    """Validate Flower's ``run_config`` mapping into a frozen :class:`RunConfig`.

    Raises:
        ConfigError: one line per problem; an unknown key gets the closest valid key.
    """
    return validate_keys(RunConfig, values, source=source)
