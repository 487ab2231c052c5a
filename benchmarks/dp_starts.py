"""The DP-utility benchmark's data and starting points.

A public slice of ``brain-mri/train`` (a stratified, seeded 20 %) is set aside: no hospital holds
it, and ``public-slice`` is pretrained on it. The hospitals share what is left, as a data tree of
symbolic links (``train/`` and, scored by the server, ``test/`` or a validation split carved from
the hospitals' part). ``public-xray`` is pretrained on the chest X-ray set's ``train/``, and
``public-xray-slice`` on the public slice starting from ``public-xray`` (public X-rays, then
public MRI). Each starting model is trained once with ``medsilo pretrain`` and kept, with the
request that made it, under the work folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import parse_run_config
from common.data.synth import write_synthetic_tree
from common.experiment import load_run_split
from common.feature_standardization import STATS_FILE
from common.models import load_model_dir
from common.pretrain import write_public_feature_stats

__all__ = ["PUBLIC_FRACTION", "STARTS", "VALIDATION_FRACTION", "hospital_tree", "quick_data", "starting_weights"]

PUBLIC_FRACTION = 0.2
VALIDATION_FRACTION = 0.15
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
STARTS = ("scratch", "public-slice", "public-xray", "public-xray-slice")
CHAINED = {"public-xray-slice": "public-xray"}
"""A start whose pretraining begins from another start's model."""
Files = dict[str, list[Path]]


def _images(split: Path) -> Files:
    """``{class: sorted image paths}`` of one split folder."""
    return {
        folder.name: sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
        for folder in sorted(split.iterdir())
        if folder.is_dir()
    }


def _carve(files: Files, fraction: float, seed: int) -> tuple[Files, Files]:
    """A stratified, seeded share ``fraction`` of every class, and the rest."""
    rng = np.random.default_rng(seed)
    taken, rest = {}, {}
    for name, paths in files.items():
        order = rng.permutation(len(paths))
        cut = int(round(fraction * len(paths)))
        taken[name] = sorted(paths[i] for i in order[:cut])
        rest[name] = sorted(paths[i] for i in order[cut:])
    return taken, rest


def _link(files: Files, folder: Path) -> int:
    """Symbolic links to ``files`` under ``folder/<class>/``; how many."""
    for name, paths in files.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for path in paths:
            (folder / name / path.name).symlink_to(path.resolve())
    return sum(len(p) for p in files.values())


def quick_data(root: Path) -> Path:
    """Generated ``brain-mri/`` and ``chest-xray/`` trees at 32 px under ``root``, for a ``--quick`` run."""
    for dataset in ("brain-mri", "chest-xray"):
        write_synthetic_tree(root / dataset, modality=dataset, train_per_class=60, test_per_class=20, size=32, seed=1)
    return root


def hospital_tree(
    data: Path, dataset: str, out: Path, *, validation: bool, carve_public: bool, seed: int = 0
) -> dict[str, Any]:
    """Write the hospitals' data tree under ``out`` (``out/hospitals``) and, when ``carve_public``, the
    public slice (``out/public-slice``); their image counts.

    With ``validation`` the server scores a stratified 15 % of the hospitals' part instead of ``test/``.
    """
    train = _images(data / dataset / "train")
    counts: dict[str, Any] = {}
    if carve_public:
        public, train = _carve(train, PUBLIC_FRACTION, seed)
        counts["public_slice"] = _link(public, out / "public-slice" / "train")
    if validation:
        scored, train = _carve(train, VALIDATION_FRACTION, seed + 1)
        counts["scored_on"] = "validation (15% of the hospitals' part of train/)"
    else:
        scored = _images(data / dataset / "test")
        counts["scored_on"] = "test/"
    counts["hospitals_train"] = _link(train, out / "hospitals" / "train")
    counts["scored"] = _link(scored, out / "hospitals" / "test")
    return counts


def _ensure_feature_stats(model_dir: Path, data: Path, dataset: str, options: dict[str, Any]) -> None:
    """Give a start that ``medsilo pretrain`` wrote before it kept feature statistics those of its own data."""
    if (model_dir / STATS_FILE).is_file():
        return
    keys = ("model", "norm-layer", "image-size", "batch-size")
    cfg = parse_run_config({"dataset": dataset, **{k: options[k] for k in keys if k in options}}, source="dp_starts")
    model, _ = load_model_dir(model_dir)
    images = load_run_split(cfg, data, "train")
    write_public_feature_stats(model_dir, model, images, cfg=cfg, device=torch.device("cpu"))
    print(f"  feature statistics of {len(images)} images written to {model_dir / STATS_FILE}", flush=True)


def starting_weights(
    start: str,
    *,
    work: Path,
    public_slice: Path,
    xray: Path,
    pretrain: Callable[[str], dict[str, Any]],
    tag: str = "",
) -> str:
    """The ``pretrained-weights`` value of ``start`` ('' for scratch), pretraining it once per request.

    ``pretrain(start)`` gives each start's ``medsilo pretrain`` options; a chained start's request
    holds its source's, so a change to the source pretrains it again. A ``tag`` keeps a variant's
    start in its own folder (``starts/<start>--<tag>``), beside the plain one.
    """
    if start == "scratch":
        return ""
    data, dataset = (xray, "chest-xray") if start == "public-xray" else (public_slice, "brain-mri")
    out = work / "starts" / (f"{start}--{tag}" if tag else start)
    request = {**pretrain(start), "data": f"{dataset}: {data.name}", "dataset": dataset}
    if start in CHAINED:
        source = CHAINED[start]
        init = starting_weights(source, work=work, public_slice=public_slice, xray=xray, pretrain=pretrain, tag=tag)
        made_by = json.loads((Path(init).parent / "request.json").read_text())
        request["pretrained-weights"] = {"start": source, **made_by}
    else:
        init = ""
    made = out / "request.json"
    if made.is_file() and json.loads(made.read_text()) == request and (out / "model" / "model.json").is_file():
        print(f"start {start}: kept ({out / 'model'})", flush=True)
        _ensure_feature_stats(out / "model", data, dataset, pretrain(start))
        return str(out / "model")
    command = [str(Path(sys.executable).parent / "medsilo"), "pretrain", "--data", str(data), "--out",
               str(out / "model"), "--dataset", dataset, "--overwrite"]  # fmt: skip
    for key, value in {**pretrain(start), **({"pretrained-weights": init} if init else {})}.items():
        command += [f"--{key}", str(value)]
    print(f"start {start}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True)
    made.write_text(json.dumps(request, indent=1))
    return str(out / "model")
