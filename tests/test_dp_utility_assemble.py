"""dp_utility.json holds only the pieces of today's recipe and today's starts; the others are named stale."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from accuracy_store import piece_path, write_piece  # noqa: E402
from dp_utility import assemble  # noqa: E402

RECIPE = {"dp-enabled": False, "dp-sample-rate": 0.5, "image-size": 64}
TODAY = {"scratch": None, "public-slice": {"epochs": 90}}


def _piece(folder: Path, start: str, setting: str, *, recipe: dict, pretraining: dict | None, accuracy: float) -> None:
    keys = {"dataset": "brain-mri", "seed": 0}
    request = {"keys": keys, "start": start, "setting": setting, "hospitals": 4, "scored_on": "test/",
               "recipe": recipe, "pretraining": pretraining}  # fmt: skip
    run = {"last2_mean": accuracy, "auroc_macro": None, "epsilon_spent": 8.0 if setting != "no-dp" else None}
    write_piece(piece_path(folder, "brain-mri", f"{start}--{setting}", 0), request, {"run": run})


def test_pieces_of_another_recipe_or_another_start_are_stale_not_rows(tmp_path: Path) -> None:
    folder = tmp_path / "dp_utility"
    plain = {k: v for k, v in RECIPE.items() if k == "dp-enabled" or not k.startswith("dp-")}
    _piece(folder, "public-slice", "no-dp", recipe=plain, pretraining={"epochs": 90}, accuracy=0.91)
    _piece(folder, "public-slice", "eps-8", recipe=RECIPE, pretraining={"epochs": 90},
           accuracy=0.90)  # fmt: skip
    _piece(folder, "scratch", "no-dp", recipe=plain, pretraining=None, accuracy=0.48)
    _piece(folder, "public-slice", "eps-1", recipe={**RECIPE, "dp-sample-rate": 0.1}, pretraining={"epochs": 90},
           accuracy=0.6)  # another recipe  # fmt: skip
    _piece(folder, "public-slice", "eps-3", recipe=RECIPE, pretraining={"epochs": 30}, accuracy=0.8)  # another start
    out = tmp_path / "dp_utility.json"
    assembled = assemble(folder, out, RECIPE, TODAY)
    assert set(assembled["brain-mri"]) == {"scratch/no-dp", "public-slice/no-dp", "public-slice/eps-8"}
    assert assembled["stale"] == [
        "brain-mri--public-slice--eps-1--seed0.json",
        "brain-mri--public-slice--eps-3--seed0.json",
    ]
    assert assembled["pretraining"] == {"public-slice": {"epochs": 90}}
    assert json.loads(out.read_text())["brain-mri"]["public-slice/eps-8"]["last2_mean"] == 0.90
