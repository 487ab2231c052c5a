"""What each figure on the results page means: per benchmark, its keys, their kinds and their units.

A :data:`Column` is ``(key, kind, meaning)``: the JSON key (dotted for a nested one), how
``results_tables.fmt`` formats it, and the unit or meaning the table's legend shows.
"""

from __future__ import annotations

Column = tuple[str, str, str]
"""A figure: its key (dotted for nested keys), its kind (how it is formatted) and its unit or meaning."""

TRAIN_THROUGHPUT: list[Column] = [
    ("auto_precision", "text", 'what `precision = "auto"` chose on this machine'),
    ("fp32_img_s", "rate", "images/s, medsilo's training loop in float32 (ResNet-18, fastest of the repeats)"),
    ("auto_img_s", "rate", 'images/s, the same under `precision = "auto"`'),
    ("speedup", "ratio", "ratio: `auto_img_s` ÷ `fp32_img_s`"),
    ("precision_size", "count", "px, image size of those runs"),
    ("epoch_s_fp32", "seconds", "s, the first float32 epoch of the training set, every image decoded again"),
    ("epoch_s_auto", "seconds", "s, decoding the set once plus the first `auto` epoch"),
    ("epoch_ratio", "ratio", "ratio: `epoch_s_fp32` ÷ `epoch_s_auto`"),
    ("accuracy_fp32", "accuracy", "test accuracy, mean of the last 2 epochs, float32"),
    ("accuracy_auto", "accuracy", "the same under `auto` (same seed)"),
    ("compile_ratio", "ratio", "ratio: epoch time under `torch.compile` (compiling included) ÷ plain `auto`"),
    ("ratio", "ratio", "ratio: medsilo's loop ÷ a hand-written PyTorch loop, images/s (lowest over the models)"),
    ("dp_ratio", "ratio", "ratio: the same for DP-SGD (medsilo's `bk` clipping ÷ Opacus' per-sample hooks)"),
    ("size", "count", "px, image size of the loop comparison"),
    ("batch", "count", "batch size of the loop comparison"),
]

HE_OVERHEAD: list[Column] = [
    ("model", "text", "the model whose updates are encrypted"),
    ("params", "count", "values in one update"),
    ("bytes_per_param_up", "amount", "bytes per value on the wire: one hospital's encrypted update"),
    ("bytes_per_param_down", "amount", "bytes per value: the encrypted aggregate every hospital gets"),
    ("max_abs_error_10", "error", "largest absolute error, decrypted aggregate against float64 FedAvg, 10 hospitals"),
    ("max_abs_error_100", "error", "the same, 100 hospitals"),
    ("server_peak_rss_gib", "amount", "GiB, peak RSS of a server process aggregating 10 updates pulled one at a time"),
    ("server_rss_after_imports_gib", "amount", "GiB, the same process after the ServerApp's imports"),
    ("encrypt_s_per_mparam", "small", "s per million values to encrypt (one hospital)"),
    ("decrypt_s_per_mparam", "small", "s per million values to decrypt"),
    ("round_time_ratio_full", "ratio", "ratio: one encrypted round ÷ one plaintext round, side by side (`round_full`)"),
    ("round_full.he_s", "seconds", "s, the encrypted round"),
    ("round_full.plain_s", "seconds", "s, the plaintext round"),
    ("round_full.workload", "text", "what that round trained"),
    ("round_time_ratio_default", "ratio", "ratio: the same at the default run's workload (`round_default`)"),
    ("round_default.he_s", "seconds", "s, the encrypted round"),
    ("round_default.plain_s", "seconds", "s, the plaintext round"),
    ("round_default.workload", "text", "what that round trained"),
]

WORKLOAD = ("dataset", "model", "size", "batch", "hospitals", "rounds", "epochs", "seed")
FL_OVERHEAD: list[Column] = [
    ("wall_ratio", "ratio", "ratio: federated ÷ centralised wall time, the same work back to back"),
    ("centralised.wall_s", "seconds", "s, centralised: the whole run"),
    ("centralised.training_s", "seconds", "s, centralised: training"),
    ("centralised.evaluation_s", "seconds", "s, centralised: scoring the test set"),
    ("federated.wall_s", "seconds", "s, federated: the whole `flwr run`"),
    ("federated.launch_s", "seconds", "s, `flwr run` to the ServerApp starting (SuperLink, simulation engine, Ray)"),
    ("federated.server_setup_s", "seconds", "s, ServerApp time outside the rounds (describing the hospitals, actors)"),
    ("federated.hospitals_training_s", "seconds", "s, the hospitals' own training ÷ how many train at once"),
    ("federated.hospitals_training_at_once", "count", "hospitals training at once"),
    ("federated.round_fixed_s", "seconds", "s, the rest of the rounds' training steps: messages, decoding, set-up"),
    ("federated.aggregation_s", "seconds", "s, aggregation"),
    ("federated.evaluation_s", "seconds", "s, central evaluation after every round"),
    ("federated.report_s", "seconds", "s, writing the report"),
    ("federated.exit_s", "seconds", "s, from the report to the end of `flwr run`"),
    ("centralised.final_accuracy", "accuracy", "test accuracy at the end, centralised (one seed: not a comparison)"),
    ("federated.final_accuracy", "accuracy", "the same, federated"),
]

SCALE: list[Column] = [
    ("completed", "text", "whether the run finished"),
    ("peak_rss_gib", "amount", "GiB, peak RSS summed over every process of the run's Flower home"),
    ("s_per_round", "amount", "s per round: the sum of a round's steps in `history.json`"),
    ("s_per_hospital_round", "small", "s per round ÷ hospitals"),
    ("growth", "ratio", "ratio: `s_per_hospital_round` ÷ the previous row's (computed here)"),
    ("steps_s.train_s", "amount", "s per round, the training step"),
    ("steps_s.aggregate_s", "amount", "s per round, aggregation"),
    ("steps_s.central_evaluate_s", "amount", "s per round, central evaluation"),
    ("wall_s", "seconds", "s, the whole `flwr run`"),
]

ACCURACY: list[Column] = [
    ("epochs", "count", "epochs of data"),
    ("rounds", "count", "federated rounds over those epochs"),
    ("final", "accuracy", "accuracy after the last epoch"),
    ("last2_mean", "accuracy", "accuracy, mean of the last 2 epochs"),
    ("last2_mean_clean", "accuracy", "the same on the test images with no duplicate or near-twin in `train/`"),
    ("sensitivity", "accuracy", "PNEUMONIA recall, mean of the last 2 epochs"),
    ("specificity", "accuracy", "NORMAL recall, mean of the last 2 epochs"),
    ("operating_point.accuracy", "accuracy", "accuracy at the threshold picked on the hospitals' validation images"),
    ("operating_point.sensitivity", "accuracy", "abnormal-class recall at that threshold, mean of the last 2 epochs"),
    ("operating_point.specificity", "accuracy", "normal-class recall at that threshold, mean of the last 2 epochs"),
    ("macro_f1", "accuracy", "macro F1 of the final model"),
    ("gap_pt", "points", "points: `last2_mean` − centralised `last2_mean` (computed here)"),
    ("baseline_gap_pt", "points", "points: `last2_mean` − the `defaults` row's, same split and seed (a screening)"),
    ("machine", "text", "the CPU the row was measured on"),
    ("date", "date", "when (UTC)"),
    ("commit", "commit", "the code measured"),
]
OPTIONAL = {  # a column only where some row has it
    "rounds", "last2_mean_clean", "gap_pt", "baseline_gap_pt", "sensitivity", "specificity",
    "operating_point.accuracy", "operating_point.sensitivity", "operating_point.specificity",
}  # fmt: skip
ORDER = (
    "centralised",
    "best-iid",
    "best-dirichlet",
    "fedavg-iid",
    "fedavg-dirichlet",
    "local-only-mean",
    "local-only-worst",
)

DP_UTILITY: list[Column] = [
    ("last2_mean", "accuracy", "central accuracy, mean of the last 2 rounds (mean over `seeds`)"),
    ("gap_pt", "points", "points against the same start without DP"),
    ("start_accuracy", "accuracy", "the starting weights' own accuracy, before round 1"),
    ("auroc_macro", "accuracy", "macro AUROC, mean of the last 2 rounds"),
    ("epsilon_spent", "epsilon", "ε spent, the most over the hospitals (δ = 1e-5 each; —: no DP)"),
    ("final", "accuracy", "central accuracy, last round (first seed)"),
    ("seeds", "text", "seeds run"),
    ("machine", "text", "CPU the run trained on"),
    ("date", "date", "when it landed"),
    ("commit", "commit", "the code that ran it"),
]
START_PROBE: list[Column] = [
    ("test_auroc_macro", "accuracy", "macro AUROC of the logistic probe on `test/`"),
    ("test_accuracy", "accuracy", "its accuracy on `test/` (threshold 0.5)"),
    ("C", "text", "inverse regularisation, chosen on the validation carve"),
    ("features", "count", "features the head receives"),
]
DP_RECIPE = ("model", "norm-layer", "image-size", "num-server-rounds", "local-epochs", "batch-size", "optimizer",
             "learning-rate", "train-from-block", "dp-optimizer", "dp-learning-rate", "dp-sample-rate", "dp-clipping",
             "dp-max-grad-norm", "dp-augmentation-multiplicity", "dp-ema-decay")

ROBUSTNESS: list[Column] = [
    ("hostile", "text", "what hospital 0 sends (—: nothing harmful)"),
    ("keys.strategy", "text", "the server's aggregation"),
    ("keys.he-enabled", "text", "under HE, with the hospitals' guard at its default"),
    ("final", "accuracy", "central accuracy, last round run"),
    ("last2_mean", "accuracy", "central accuracy, mean of the last 2 rounds run"),
    ("rounds_completed", "count", "rounds with a central evaluation"),
    ("declines", "count", "rounds in which a hospital declined the global model (computed here)"),
    ("status", "text", "how the run ended (`stopped`: a majority declined, with one line)"),
    ("seconds", "seconds", "s, the whole run, on a machine shared with other jobs: not a timing"),
    ("machine", "text", "the CPU it ran on (the file's header names the last run's)"),
]

VERDICTS: list[Column] = [
    ("clean_last2_mean", "accuracy", "the clean run's accuracy, mean of the last 2 rounds"),
    ("scaled.fedavg_drop_points", "points", "points: clean − plain FedAvg under `scaled`"),
    ("scaled.best_robust", "text", "the best robust strategy under `scaled`"),
    ("scaled.best_robust_gap_points", "points", "points: clean − that strategy"),
    ("label-flip.fedavg_drop_points", "points", "points: clean − plain FedAvg under `label-flip`"),
    ("label-flip.best_robust", "text", "the best robust strategy under `label-flip`"),
    ("label-flip.best_robust_gap_points", "points", "points: clean − that strategy"),
]

DP_OVERHEAD: list[Column] = [
    ("throughput_ratio", "ratio", "ratio: images/s without DP ÷ with DP-SGD in `mode`"),
    ("mode", "text", "the DP-SGD mode medsilo trains with: the fastest that ran correctly"),
    ("non_dp_images_per_s", "rate", "images/s without DP (mean of a run before and after the DP modes)"),
]
DP_MODES: list[Column] = [
    ("correct", "text", "one noise-free step matches per-example clipping computed independently"),
    ("images_per_s", "rate", "images/s with DP-SGD"),
    ("ratio", "ratio", "ratio: non-DP images/s ÷ this mode's"),
    ("rel_error", "error", "relative max-abs error against that reference"),
]

DP_PRECISION: list[Column] = [
    ("norm_rel_err", "error", "largest relative error of the per-example gradient norms against float32"),
    ("sum_rel_err", "error", "relative error of the clipped sum against float32"),
    ("max_contribution_over_c", "small", "largest norm one example adds ÷ the clipping bound C (above 1: broken)"),
    ("exact_to_bf16_rounding", "text", "within bf16's rounding"),
]
SOAK: list[Column] = [
    ("rounds", "count", "rounds the run was asked for"),
    ("rounds_completed", "count", "rounds in `history.json`, each exactly once"),
    ("lost_rounds", "count", "rounds missing or recorded twice"),
    ("ledger_mismatches", "count", "hospitals whose epsilon differs from Google's dp-accounting (rounds it trained)"),
    ("unreadable_checkpoints", "count", "kept checkpoints that failed to load"),
    ("kills", "count", "hospitals SIGKILLed (SuperNode and ClientApps) and restarted later"),
    ("kills_while_training", "count", "of them, killed while their ClientApp was running"),
    ("stops", "count", "times the operator stopped the run with `flwr stop`"),
    ("resumes", "count", "`resume-from` restarts (one that found too few hospitals stopped by itself: resumed again)"),
    ("seconds", "seconds", "s, the whole soak, on a machine shared with other jobs"),
    ("seconds_per_round", "seconds", "s per round, the same"),
]
