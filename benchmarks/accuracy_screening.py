"""One table of recipe screenings: folders of accuracy pieces, each against a baseline, named by what it changed.

Each folder holds the pieces ``benchmarks/accuracy.py --out FOLDER`` wrote for one candidate
(one lever set with ``--set``). A candidate's row is named by the run-config keys its request
changed against the baseline's, read from the pieces themselves (a key the baseline's code did not
have yet counts only where it trains otherwise than that code did), and adds ``baseline_gap_pt``:
its ``last2_mean`` minus the baseline's, in points. Only pieces that were scored the same way
(data, epochs, split, hospitals; the rounds per epoch may differ, since ``local-epochs`` is a
lever) are compared; anything else stops with one line::

    python benchmarks/accuracy_screening.py --baseline benchmarks/results/tuning/brain-64-val-20ep-defaults \\
        benchmarks/results/tuning/brain-64-val-20ep-ls01 --out benchmarks/results/accuracy-screening-64px.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from accuracy_store import trained_as_before, trained_keys

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import RunConfig  # noqa: E402

__all__ = ["BASELINE", "changed_keys", "screening"]

BASELINE = "defaults"
"""The baseline row's name."""


def _pieces(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(dataset, setting): piece}`` for the seed-0 pieces in ``folder``; one line if there are none."""
    pieces = {}
    for path in sorted(folder.glob("*--*--seed0.json")):
        dataset, setting, _ = path.stem.split("--")
        pieces[(dataset, setting)] = json.loads(path.read_text())
    if not pieces:
        raise SystemExit(f"{folder}: no accuracy pieces (*--*--seed0.json); expected a folder accuracy.py --out wrote")
    return pieces


def changed_keys(baseline: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """The run-config keys whose value ``candidate``'s request trained with and ``baseline``'s did not.

    A key the baseline's request lacks counts unless it trains as the baseline's code did
    (:func:`accuracy_store.trained_as_before`, against the run-config defaults).
    """
    old, new = trained_keys(baseline["keys"]), trained_keys(candidate["keys"])
    defaults = RunConfig().to_run_config()
    return {
        key: value for key, value in new.items()
        if (old[key] != value if key in old else not trained_as_before(key, value, defaults))
    }  # fmt: skip


def screening(baseline: Path, candidates: list[Path]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{dataset: {row name: summary}}``: the baseline's setting as ``defaults``, each candidate's by its changes."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    reference = _pieces(baseline)
    for (dataset, setting), piece in reference.items():
        if dataset in table:
            raise SystemExit(f"{baseline}: more than one setting on {dataset}; expected the one setting screened")
        table[dataset] = {BASELINE: {**piece["results"][setting], **_made(piece), "baseline_gap_pt": 0.0}}
    for folder in candidates:
        for key, piece in _pieces(folder).items():
            if key not in reference:
                raise SystemExit(f"{folder}: {key[0]} {key[1]} has no baseline piece in {baseline}")
            base = reference[key]
            scored = _scored(piece["request"])
            if scored != _scored(base["request"]):
                raise SystemExit(f"{folder}: scored otherwise than the baseline ({scored}); expected the same "
                                 f"data, epochs, split and hospitals")  # fmt: skip
            changes = changed_keys(base["request"], piece["request"])
            if not changes:
                raise SystemExit(f"{folder}: trains what the baseline trained; expected at least one changed key")
            row, base_row = piece["results"][key[1]], base["results"][key[1]]
            name = " ".join(f"{k}={v!r}" for k, v in changes.items())
            gap = 100 * (row["last2_mean"] - base_row["last2_mean"])
            shown = {k: v for k, v in row.items() if k != "config"}  # the row's name says what it changed
            table[key[0]][name] = {**shown, **_made(piece), "baseline_gap_pt": gap}
    return table


def _scored(request: dict[str, Any]) -> dict[str, Any]:
    """What a request scored and on how much data: all but how it trained (its keys, and the rounds they make)."""
    return {k: v for k, v in request.items() if k not in ("keys", "rounds_per_epoch")}


def _made(piece: dict[str, Any]) -> dict[str, Any]:
    """A piece's provenance, which the results page shows per row."""
    return {key: piece[key] for key in ("commit", "date", "machine")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the folder of the baseline's pieces")
    parser.add_argument("candidates", type=Path, nargs="+", help="folders of the candidates' pieces")
    parser.add_argument("--out", type=Path, required=True, help="the JSON to write")
    args = parser.parse_args()
    table = screening(args.baseline, args.candidates)
    args.out.write_text(json.dumps(table, indent=2, allow_nan=False))
    for dataset, rows in table.items():
        for name, row in sorted(rows.items(), key=lambda item: -item[1]["last2_mean"]):
            print(f"{dataset:12s} {row['last2_mean']:.4f} {row['baseline_gap_pt']:+.1f} pt  {name}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
