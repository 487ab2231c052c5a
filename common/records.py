"""Names of the records and keys that travel in Flower messages, in one style."""

from __future__ import annotations

__all__ = [
    "ARRAYS",
    "CONFIG",
    "METRICS",
    "NUM_EXAMPLES",
    "SERVER_ROUND",
    "TRAIN_LOSS",
    "TRAIN_ACCURACY",
    "TRAIN_SECONDS",
    "EVAL_LOSS",
    "EVAL_ACCURACY",
    "HOSPITAL",
    "SKIPPED_IMAGES",
    "CLASS_COUNTS",
    "PRECISION",
    "ROLE",
    "DATA_SOURCE",
    "HE_KEYS_DIR",
    "HE_KEY_ID",
    "NUM_EXAMPLES_TOTAL",
    "ENCRYPT_SECONDS",
    "DECRYPT_SECONDS",
    "PREDICTIONS",
    "DESCRIBE",
    "CENTRAL",
    "RUN_DIR",
    "DECLINED",
    "EPSILON",
    "DELTA",
    "NOISE_MULTIPLIER",
    "SAMPLE_RATE",
    "STEPS",
    "MAX_GRAD_NORM",
    "STEP_NORM",
    "STEP_RATIO",
    "STEP_DECLINED",
    "CALIBRATE",
    "CALIBRATION",
    "CALIBRATION_STAGE",
    "STATISTICS",
    "TEMPERATURE",
    "LOCAL_BASELINE",
    "STARTING_WEIGHTS",
    "BASELINE_ROUNDS",
    "LOCAL_ONLY_ACCURACY",
    "GLOBAL_ACCURACY",
]

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

NUM_EXAMPLES = "num-examples"
SERVER_ROUND = "server-round"
TRAIN_LOSS = "train-loss"
TRAIN_ACCURACY = "train-accuracy"
TRAIN_SECONDS = "train-seconds"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
HOSPITAL = "hospital"
SKIPPED_IMAGES = "skipped-images"
CLASS_COUNTS = "class-counts"
PRECISION = "precision"
"""The precision a hospital trained in this round (``fp32``, ``bf16``, ``fp16``)."""

# Encrypted FedAvg
ROLE = "role"
DATA_SOURCE = "data"
"""A node's training data: ``own`` (its node-config ``data-path``) or ``simulated`` (a partition)."""
HE_KEYS_DIR = "he-keys-dir"
HE_KEY_ID = "he-key-id"
NUM_EXAMPLES_TOTAL = "num-examples-total"
ENCRYPT_SECONDS = "encrypt-seconds"
DECRYPT_SECONDS = "decrypt-seconds"
PREDICTIONS = "predictions"
DESCRIBE = "describe"
CENTRAL = "central"

# Differential privacy
RUN_DIR = "run-dir"
DECLINED = "declined"
EPSILON = "epsilon"
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
STEPS = "steps"
MAX_GRAD_NORM = "max-grad-norm"

# The key-holders' global-step guard (update-norm-limit), in a hospital's ConfigRecord
STEP_NORM = "step-norm"
"""The norm per round of the global step this hospital received (this round's model minus its last base)."""
STEP_RATIO = "step-ratio"
"""That norm over the median of the hospital's earlier steps' norms."""
STEP_DECLINED = "step-declined"
"""True on a decline because the global step jumped: a majority of these stops the run."""

# Calibration and operating points, after the last round (query.calibrate)
CALIBRATE = "calibrate"
CALIBRATION = "calibration"
"""Under HE: the evaluator's reply, what it read from the summed statistics (temperature, thresholds)."""
CALIBRATION_STAGE = "calibration-stage"
"""``nll`` or ``histograms`` (a hospital's statistics); under HE ``pick-nll`` or ``pick-histograms`` (the evaluator)."""
STATISTICS = "statistics"
"""A hospital's calibration statistics: fixed-size sums, plaintext or encrypted."""
TEMPERATURE = "temperature"
"""The fitted temperature(s) the hospitals apply before their score histograms."""

# What each hospital gains, after the last round (query.local-baseline, with local-baseline = true)
LOCAL_BASELINE = "local_baseline"
STARTING_WEIGHTS = "starting-weights"
"""The run's starting weights (plaintext: the server's own), from which the local-only model trains."""
BASELINE_ROUNDS = "baseline-rounds"
"""The rounds this hospital trained in the federation: its local-only model trains the same rounds."""
LOCAL_ONLY_ACCURACY = "local-only-accuracy"
GLOBAL_ACCURACY = "global-accuracy"
