"""The run-config reference, generated from :class:`RunConfig`: every key's type, default, allowed values and meaning.

The docs site's reference page is this table (``docs/hooks.py`` inserts it at build time), so a
key added to ``RunConfig`` without a line in :data:`MEANINGS` fails the docs test.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic.fields import FieldInfo

from common.architectures import ARCHITECTURES
from common.config import STRATEGIES, RunConfig
from common.presets import PRESETS

__all__ = ["MEANINGS", "reference_rows", "reference_table"]

MEANINGS: dict[str, str] = {
    "num-server-rounds": "federated rounds",
    "fraction-train": "share of the hospitals sampled to train each round",
    "fraction-evaluate": "share of the hospitals sampled to score their local hold-out each round (0: none)",
    "min-train-nodes": "fewest hospitals a round trains on; fewer valid replies stop the run (resumable)",
    "min-evaluate-nodes": "fewest hospitals a round's local evaluation needs",
    "local-epochs": "epochs of its shard each hospital trains per round, a fraction being that share of its batches "
    "(when `local-steps` is 0)",
    "local-steps": "batches each hospital trains per round (0: `local-epochs` of its shard; refused with DP)",
    "batch-size": "local batch size; under DP the expected Poisson batch, or with `dp-sample-rate` the most images "
    "(views) one forward pass holds",
    "learning-rate": "local learning rate (the peak of the schedule; under DP see `dp-learning-rate`)",
    "optimizer": "local optimizer (under DP see `dp-optimizer`)",
    "momentum": "SGD's momentum",
    "weight-decay": "the optimizer's weight decay",
    "dataset": "preset: class list, channels, normalisation and augmentation",
    "classes": "comma-separated class list overriding the preset's ('' keeps the preset's)",
    "data-root": "`ROOT/{train,test}/<class>/` tree, a MedMNIST `.npz`, or (multi-label) a folder with `labels.csv`",
    "image-size": "training size in pixels (square)",
    "partitioner": "how a simulation splits `data-root` across hospitals (`natural`: `ROOT/train/<hospital>/`)",
    "dirichlet-alpha": "label skew of the `dirichlet` partitioner (smaller: more skewed)",
    "local-val-fraction": "share of each hospital's shard held out for its local evaluation",
    "model": "the architecture (torchvision's where it has one)",
    "pretrained-weights": "starting weights: a `medsilo pretrain` model directory, a local `.safetensors`/`.pt` "
    "file, or `imagenet` (torchvision's, downloaded into `$TORCH_HOME/hub/checkpoints/`: the only download); "
    "'': fresh",
    "train-from-block": "only this block and the later ones train; the earlier ones stay frozen (0: all train). "
    "Blocks: cnn3 conv1–3, classifier; resnets stem, layer1–4, fc; densenet121 stem, denseblock1–4, classifier; "
    "alexnet conv1–5, fc6–8; vgg11 conv1–5, fc6–8; inception_v3 stem, mixed5–7, fc",
    "trainable-params": "in the blocks that train: `all` their parameters, or `norm`, only the normalisation "
    "layers' scales and shifts, with the whole head (FiLM-style tuning: a few thousand parameters, which DP-SGD's "
    "noise barely touches)",
    "device": "`auto`: CUDA when present",
    "precision": "`auto`: bf16 autocast where the hardware has native bf16, fp16 with a scaler on older GPUs, "
    "else float32 (fp16 is refused on a CPU; DP-SGD always trains in float32)",
    "decoded-cache-mb": "bound on one decoded split kept in memory per process; a larger one is decoded per read",
    "he-enabled": "encrypted FedAvg (CKKS): the server only adds ciphertexts",
    "he-keys-dir": "the server's keys folder, holding `public.ctx` only ('': a key pair made for this simulation)",
    "he-secret-context": "simulation with explicit keys: the `secret.ctx` simulated hospitals and evaluator load",
    "he-workers": "encryption worker processes per hospital",
    "dp-enabled": "sample-level DP-SGD at every hospital (Opacus, Poisson sampling)",
    "dp-target-epsilon": "ε each hospital may spend over the whole run; a round that would exceed it is declined",
    "dp-delta": "δ of the guarantee (0: min(1e-5, 1/(10 n)) per hospital)",
    "dp-max-grad-norm": "per-example clipping bound C",
    "dp-noise-multiplier": "σ; 0: planned once from `dp-target-epsilon` over the whole run",
    "dp-sample-rate": "Poisson sampling rate q of each DP-SGD step, an epoch being round(1/q) steps "
    "(0: q = 1/⌈n / batch-size⌉); σ is planned for it",
    "dp-augmentation-multiplicity": "K augmented views of each sampled image, their gradients averaged before the "
    "image's one clip (De et al., 2022): no privacy cost",
    "dp-clipping": "`clip`: each image's gradient g times min(1, C/‖g‖); `normalize`: times C/(‖g‖ + 0.01), every "
    "image (automatic clipping, Bu et al., 2022); both add at most C",
    "dp-ema-decay": "each hospital sends the bias-corrected EMA of its round's DP-SGD iterates with this decay "
    "(0: the last iterate); free post-processing",
    "dp-optimizer": "the optimizer under DP (`auto`: `optimizer`)",
    "dp-learning-rate": "the learning rate under DP, the peak of `dp-lr-schedule` (0: `learning-rate`)",
    "dp-lr-schedule": "`constant`: DP-SGD at `dp-learning-rate` throughout (De et al. 2022); `run`: the run's "
    "`lr-schedule` and `lr-warmup-rounds` by round, as without DP (no privacy cost: the noise does not depend "
    "on the rate)",
    "seed": "seeds the initial weights, the split and local shuffling and augmentation",
    "output-dir": "where run directories are written",
    "run-name": "the run directory's name ('': dataset, UTC time and run id)",
    "round-timeout": "seconds a round waits for replies before it goes on without the missing hospitals",
    "resume-from": "a run directory whose last checkpoint this run continues",
    "strategy": "the server step, one of Flower's own strategies (under HE only `fedavg` and `fedprox`); "
    "`auto`: `fedavgm` with `server-momentum`, or `fedavg` under HE; "
    "`fedmedian`, `fedtrimmedavg`, `krum`, `multikrum` and `bulyan` tolerate hostile hospitals",
    "server-learning-rate": "server learning rate of FedAvgM, FedAdam, FedYogi and FedAdagrad",
    "server-momentum": "FedAvgM's server momentum",
    "proximal-mu": "FedProx's μ: each hospital adds (μ/2)‖w − w_global‖² to its loss, whichever `strategy` "
    "aggregates (`fedprox` is FedAvg's weighted average; with `auto` the proximal term meets server momentum); "
    "0 under DP",
    "trim-fraction": "FedTrimmedAvg's β: the share of updates cut from each end of every coordinate "
    "(min-train-nodes × β must cut at least one)",
    "num-malicious-nodes": "f, the hostile hospitals Krum, MultiKrum and Bulyan tolerate: Krum and MultiKrum need "
    "min-train-nodes > 2f + 2, Bulyan ≥ 4f + 3; MultiKrum averages the n − f best-scored updates",
    "update-norm-limit": "a hospital declines a global model whose step exceeds this many times the median of its "
    "last 5 steps; a majority of declines stops the run at its last good checkpoint (0: off). Ordinary runs stay "
    "below 1.2 with FedAvg and FedAvgM 0.5; server momentum above 0.5 needs ≥ 8",
    "optimizer-state": "`keep`: each hospital keeps its optimizer's state across rounds in its state folder",
    "lr-schedule": "the local learning rate over the whole run, after the warm-up",
    "lr-step-rounds": "`step` schedule: the rounds after which the learning rate is multiplied by `lr-step-factor`",
    "lr-step-factor": "`step` schedule: the factor",
    "class-weights": "`balanced`: each hospital weights its loss by its own shard's class counts (refused under DP)",
    "label-smoothing": "ε of label smoothing: the training target spreads ε evenly over the classes, 1 − ε stays on "
    "the label (refused under DP and for multi-label data)",
    "augmentation-strength": "scales the dataset's training augmentation (rotation, zoom, shift, colour jitter); "
    "0 turns it off, flips included",
    "lr-warmup-rounds": "rounds of linear learning-rate warm-up",
    "norm-layer": "`batch` (BatchNorm, statistics averaged) or `group` (GroupNorm, the variant DP builds)",
    "norm-groups": "GroupNorm's groups in the GroupNorm variant: gcd(norm-groups, channels) per layer",
    "batchnorm-freeze": "from this share of the rounds on, hospitals train with the global model's BatchNorm "
    "statistics, which then stay fixed (FixBN); 0 keeps batch statistics all run",
    "weight-standardization": "the GroupNorm variant's convolutions use their filters centred and scaled to unit norm",
    "feature-standardization": "the head's input is standardised by the feature mean and spread that `medsilo "
    "pretrain` measured on its public images (`pretrained-weights` names its model); outputs start unchanged",
    "loss": "`logit-adjusted`: each hospital trains on logits plus the log of its own class frequencies "
    "(refused under DP; `auto` is cross-entropy there)",
    "task": "`multiclass` or `multilabel`, as the preset says (`auto`; a contradicting value is an error)",
    "label-threshold": "multi-label decision threshold in the rounds' evaluations: one for all labels, or a "
    "comma-separated one per label; the final model's are fitted on the hospitals' validation splits "
    "(`target-sensitivity`), and this stays for a label they cannot fit (no positive or no negative image)",
    "early-stopping-patience": "stop after this many rounds without a lower validation loss, keeping the best (0: off)",
    "calibrate": "after the last round, fit a temperature (one per label in multi-label runs) on the hospitals' "
    "validation splits, federatedly (each sends its validation NLL summed over a fixed grid of temperatures); "
    "stored in `model/model.json`, applied by `medsilo predict`, `evaluate` and `ui`",
    "target-sensitivity": "pick the decision threshold on the positive (abnormal) classes' summed probability so that "
    "the hospitals' pooled validation sensitivity reaches this, federatedly (each sends score histograms); "
    "multi-label: one threshold per label, by best F1 when 0; stored with the model (0: unset)",
    "local-baseline": "after the last round, each hospital also trains a model on its shard alone for the rounds it "
    "trained and scores it and the global model on its validation split: the report's per-hospital gain table "
    "(doubles the hospitals' training; refused under `dp-enabled`)",
}


_REGISTRIES: dict[str, tuple[str, ...]] = {
    "dataset": tuple(PRESETS),
    "model": tuple(ARCHITECTURES),
    "strategy": STRATEGIES,
}
"""Keys checked against a registry rather than a ``Literal``."""


def _allowed(key: str, field: FieldInfo) -> str:
    """The values a key takes: its choices, or its range."""
    choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else ()
    choices = choices or _REGISTRIES.get(key, ())
    if choices:
        return ", ".join(f"`{c}`" for c in choices)
    bounds = []
    for meta in field.metadata:
        for attr, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                bounds.append(f"{symbol} {value}")
    return ", ".join(bounds)


def _type(field: FieldInfo) -> str:
    annotation: Any = field.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return "string"
    return {int: "integer", float: "number", bool: "boolean", str: "string"}.get(annotation, str(annotation))


def reference_rows() -> list[tuple[str, str, str, str, str]]:
    """``(key, type, default, allowed values, meaning)`` for every run-config key, in ``RunConfig``'s order.

    Raises:
        KeyError: a key without a line in :data:`MEANINGS`.
    """
    rows = []
    for name, field in RunConfig.model_fields.items():
        key = field.alias or name
        default = field.default
        shown = "`''`" if default == "" else f"`{str(default).lower() if isinstance(default, bool) else default}`"
        rows.append((key, _type(field), shown, _allowed(key, field), MEANINGS[key]))
    return rows


def reference_table() -> str:
    """The reference as one Markdown table."""
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    lines += [f"| `{k}` | {t} | {d} | {a} | {m} |" for k, t, d, a, m in reference_rows()]
    return "\n".join(lines) + "\n"
