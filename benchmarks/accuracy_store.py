"""The accuracy benchmark's results in pieces: one file per (dataset, setting, seed), assembled into one JSON.

Each piece holds the request that produced it (the resolved run-config keys, epochs, rounds
per epoch and what was scored), its provenance (commit, date, machine), the per-epoch curve
and the seconds it took. A rerun skips every setting whose piece holds the same request, so a
long benchmark can be stopped and resumed, and each piece committed as it lands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from provenance import provenance

__all__ = [
    "KEYS_ADDED_AT", "assemble", "load_piece", "piece_path", "same_request", "trained_as_before", "trained_keys",
    "trained_request", "write_piece",
]

KEYS_ADDED_AT = {"augmentation-strength": 1.0}
"""Keys added after pieces were written, at the value that trains as the code before them did.

A piece without such a key answers a request only at this value, whatever the key's default
has become since; any other key added later answers at its default.
"""


def trained_as_before(key: str, value: Any, defaults: dict[str, Any]) -> bool:
    """Whether ``key``, added since a piece was written, at ``value`` trains as the piece's code did.

    That is :data:`KEYS_ADDED_AT`'s value where it names the key, else the key's default in ``defaults``.
    """
    before = {**defaults, **KEYS_ADDED_AT}
    return key in before and value == before[key]


def piece_path(folder: Path, dataset: str, setting: str, seed: int) -> Path:
    """``folder/<dataset>--<setting>--seed<seed>.json``."""
    return folder / f"{dataset}--{setting}--seed{seed}.json"


def trained_keys(keys: dict[str, Any]) -> dict[str, Any]:
    """``keys`` without the DP recipe's when DP is off: they change nothing a non-private run trains."""
    if keys.get("dp-enabled"):
        return keys
    return {k: v for k, v in keys.items() if not k.startswith("dp-") or k == "dp-enabled"}


def trained_request(request: dict[str, Any]) -> dict[str, Any]:
    """``request`` with its run-config ``keys`` as :func:`trained_keys` gives them."""
    return {**request, "keys": trained_keys(request.get("keys", {}))}


def same_request(stored: dict[str, Any], request: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """Whether a piece made by ``stored`` answers ``request``.

    Equal requests do, once a non-private run's DP keys are set aside (:func:`trained_keys`); so
    does one whose run-config ``keys`` add only keys the piece's code did not have yet, each at
    the value that trains as that code did (:data:`KEYS_ADDED_AT`, else its default in
    ``defaults``), since such a key changes nothing it trained.
    """
    if trained_request(stored) == trained_request(request):
        return True
    old, new = trained_keys(stored.get("keys", {})), trained_keys(request.get("keys", {}))
    rest_equal = {k: v for k, v in stored.items() if k != "keys"} == {k: v for k, v in request.items() if k != "keys"}
    added = set(new) - set(old)
    return (
        rest_equal
        and set(old) <= set(new)
        and all(new[k] == old[k] for k in old)
        and all(trained_as_before(k, new[k], defaults) for k in added)
    )


def load_piece(
    path: Path, request: dict[str, Any], defaults: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]] | None:
    """The stored results of ``path`` when it answers ``request`` (:func:`same_request`); else ``None`` (run it)."""
    if not path.is_file():
        return None
    piece = json.loads(path.read_text())
    return piece["results"] if same_request(piece.get("request", {}), request, defaults or {}) else None


def write_piece(path: Path, request: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    """Write one setting's results (``{name: summary}``: one setting may report several names)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**provenance(), "request": request, "results": results}, indent=2, allow_nan=False))
    tmp.replace(path)


def assemble(folder: Path, out: Path) -> dict[str, dict[str, Any]]:
    """``{dataset: {name: summary}}`` from every piece in ``folder`` (seed 0 first), written to ``out``.

    Each summary carries its piece's ``commit``, ``date`` and ``machine``: the results page names them per row.
    """
    assembled: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*--*--seed*.json"), key=lambda p: (p.name.split("--seed")[0], _seed(p))):
        piece = json.loads(path.read_text())
        dataset = piece["request"]["keys"]["dataset"]
        made = {key: piece[key] for key in ("commit", "date", "machine")}
        for name, result in piece["results"].items():
            key = name if piece["request"]["keys"]["seed"] == 0 else f"{name}-seed{piece['request']['keys']['seed']}"
            assembled.setdefault(dataset, {})[key] = {**result, **made}
    out.write_text(json.dumps(assembled, indent=2, allow_nan=False))
    return assembled


def _seed(path: Path) -> int:
    return int(path.stem.rsplit("--seed", 1)[1])
