"""start_probe: the features are the classifier head's input, and the probe scores as scikit-learn does."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from start_probe import features, probe  # noqa: E402

from common.config import RunConfig  # noqa: E402
from common.data import build_transform  # noqa: E402
from common.data.synth import write_synthetic_tree  # noqa: E402
from common.experiment import (  # noqa: E402
    initial_model,
    load_run_split,
    model_spec,  # noqa: E402
    preset_for,
)
from common.models import build_from_spec, save_model_dir  # noqa: E402


def test_features_are_the_heads_input(tmp_path: Path) -> None:
    root = write_synthetic_tree(tmp_path / "data", modality="chest-xray", train_per_class=6, test_per_class=3, size=32)
    start = RunConfig(dataset="chest-xray", model="cnn3", norm_layer="group", image_size=32)
    save_model_dir(tmp_path / "start", build_from_spec(model_spec(start), seed=3), model_spec(start))
    cfg = RunConfig(dataset="chest-xray", model="cnn3", norm_layer="group", image_size=32,
                    pretrained_weights=str(tmp_path / "start"))  # fmt: skip
    got, labels = features(initial_model(cfg), cfg, root, "test")
    model = initial_model(cfg).eval()
    model.classifier = torch.nn.Identity()
    images = load_run_split(cfg, root, "test")
    transform = build_transform(preset_for(cfg), train=False)
    with torch.no_grad():
        expected = model(torch.stack([transform(image) for image in images.images])).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, images.labels.numpy())


def test_the_probe_chooses_c_on_the_held_part_and_scores_test_once() -> None:
    rng = np.random.default_rng(0)

    def part(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        return rng.normal(size=(n, 5)) + y[:, None] * np.array([1.0, 0.5, 0, 0, 0]), y

    train, held, whole, test = part(80), part(40), part(120), part(60)
    row = probe(train, held, whole, test)
    by_c = {c: roc_auc_score(held[1], LogisticRegression(C=c, max_iter=5000).fit(*train).predict_proba(held[0])[:, 1])
            for c in (0.01, 0.1, 1.0, 10.0)}  # fmt: skip
    assert row["C"] == max(by_c, key=by_c.__getitem__)
    refit = LogisticRegression(C=row["C"], max_iter=5000).fit(*whole)
    assert row["test_auroc_macro"] == roc_auc_score(test[1], refit.predict_proba(test[0])[:, 1])
    assert row["features"] == 5
