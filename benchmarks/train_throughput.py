"""Images/s of the ClientApp's local training: by precision, and against a minimal hand-written PyTorch loop.

**Precision** (``fp32_img_s``, ``auto_img_s``, ``speedup``): medsilo's own loop
(``train_local``, the brain MRI preset's augmentation), ResNet-18 at 128 px, batch 32, one
process, ``--threads`` threads (2), in float32 and in ``precision = "auto"`` (bf16 where the
CPU has AMX or avx512_bf16), alternating, fastest of ``--repeats``. With ``--data-root`` (the
full brain MRI set) it also trains centralised for ``--epochs`` (6) epochs at 128 px, the test
split scored after each: fp32 decoding every image again in every epoch (``decoded-cache-mb =
0``, the loading before this work), then ``auto`` with images decoded once, then ``auto`` under
``torch.compile``. ``epoch_s_fp32`` is the first fp32 epoch, decoding included;
``epoch_s_auto`` is decoding the set once plus the first ``auto`` epoch; ``accuracy_*`` are
the mean test accuracy of the last 2 epochs (same seed); ``compile_ratio`` is the whole
compiled run's epoch time (compilation included) over the plain ``auto`` run's.

**Against a hand-written loop** (``ratio``, ``dp_ratio``): same model, batch, images
(decoded in memory, the same augmentation and normalisation) and precision (``auto``, the
hand-written loop under the same autocast). ``ours`` is ``client.training.train_local``
(plain) and ``common.privacy.dpsgd.train_private`` (DP-SGD, medsilo's ``bk`` clipping, Poisson
sampling); the hand-written loops are a bare ``for x, y in loader`` with cross-entropy and Adam,
and for DP the same with Opacus' ``PrivacyEngine.make_private`` (its default per-sample hooks).
Each side runs once to warm up, then ``--repeats`` times alternating with the other; the
fastest run of each counts. ``ratio`` = ours ÷ hand-written (plain), ``dp_ratio`` the same for
DP-SGD, each the lowest over the models. On CUDA both sides get ``cudnn.benchmark``,
``channels_last``, pinned memory and ``non_blocking`` copies. Writes
``benchmarks/results/train_throughput.json`` (``--quick``: ``train_throughput-quick.json``).

    python benchmarks/train_throughput.py --data-root DATA/brain-mri   # everything, about 25 min on 2 cores
    python benchmarks/train_throughput.py                   # without the epoch runs
    python benchmarks/train_throughput.py --models resnet18,densenet121 --size 224 --batch 64   # GPU size
    python benchmarks/train_throughput.py --quick           # cnn3 at 32 px, synthetic epochs: about a minute
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from centralised_epochs import centralised_epochs, data_root_of  # noqa: E402
from provenance import provenance  # noqa: E402

from client.training import train_local  # noqa: E402
from common.config import RunConfig, parse_run_config  # noqa: E402
from common.data import ImageSet, build_transform  # noqa: E402
from common.data.synth import write_synthetic_tree  # noqa: E402
from common.experiment import initial_model, preset_for  # noqa: E402
from common.inference import loader, resolve_device  # noqa: E402
from common.precision import cpu_bf16_flags, resolve_precision  # noqa: E402
from common.privacy.dpsgd import train_private  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _images(n: int, size: int, classes: tuple[str, ...], seed: int = 0) -> ImageSet:
    """``n`` random gray images, already decoded, with balanced labels."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n) % len(classes)
    return ImageSet(pixels, labels, tuple(f"{i}.png" for i in range(n)), classes)


def _prepare(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    return model.to(device).to(memory_format=torch.channels_last)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _hand_plain(cfg: RunConfig, images: ImageSet, device: torch.device) -> float:
    """Seconds for one epoch of the minimal loop."""
    model = _prepare(initial_model(cfg), device).train()
    _sync(device)
    start = time.perf_counter()  # like ours: the optimizer and the loader are part of the round
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    batches = loader(images, build_transform(preset_for(cfg), train=True), batch_size=cfg.batch_size, device=device,
                     shuffle=True, drop_last=True)
    precision = resolve_precision(cfg.precision, device)
    for x, y in batches:
        x = x.to(device, non_blocking=True, memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
    _sync(device)
    return time.perf_counter() - start


def _ours_plain(cfg: RunConfig, images: ImageSet, device: torch.device) -> float:
    model = _prepare(initial_model(cfg), device)
    _sync(device)
    start = time.perf_counter()
    train_local(model, images, cfg=cfg, preset=preset_for(cfg), device=device, seed=cfg.seed)
    _sync(device)
    return time.perf_counter() - start


def _hand_dp(cfg: RunConfig, images: ImageSet, device: torch.device) -> float:
    """One epoch of Opacus' own recipe: make_private (hooks, Poisson sampling), the loop, noise 1."""
    from opacus import PrivacyEngine

    model = initial_model(cfg).to(device).train()  # the DP-compatible (GroupNorm) variant under dp-enabled
    _sync(device)
    start = time.perf_counter()  # like ours: wrapping the model is part of the round
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    batches = loader(images, build_transform(preset_for(cfg), train=True), batch_size=cfg.batch_size, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, optimizer, batches = PrivacyEngine().make_private(
            module=model, optimizer=optimizer, data_loader=batches, noise_multiplier=1.0, max_grad_norm=1.0
        )
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    _sync(device)
    return time.perf_counter() - start


def _ours_dp(cfg: RunConfig, images: ImageSet, device: torch.device) -> float:
    model = initial_model(cfg)
    _sync(device)
    start = time.perf_counter()
    train_private(
        model, images, transform=build_transform(preset_for(cfg), train=True), batch_size=cfg.batch_size, epochs=1,
        lr=cfg.learning_rate, optimizer_name="adam", noise_multiplier=1.0, max_grad_norm=1.0, seed=cfg.seed,
        device=device,
    )
    _sync(device)
    return time.perf_counter() - start


def _side_by_side(
    ours: Callable[[], float], hand: Callable[[], float], *, images: int, repeats: int
) -> dict[str, float]:
    """Images/s of both, fastest of ``repeats`` alternating runs after one warm-up each."""
    ours(), hand()
    ours_s, hand_s = [], []
    for _ in range(repeats):
        ours_s.append(ours())
        hand_s.append(hand())
    ours_rate, hand_rate = images / min(ours_s), images / min(hand_s)
    ratio = round(ours_rate / hand_rate, 4)
    return {"ours_img_s": round(ours_rate, 2), "hand_img_s": round(hand_rate, 2), "ratio": ratio}


def measure(model: str, *, size: int, batch: int, steps: int, repeats: int, device: torch.device) -> dict[str, Any]:
    """Plain and DP throughput of ``model``, ours against the hand-written loops."""
    n = batch * steps
    images = _images(n, size, ("a", "b", "c", "d"))
    keys = {"model": model, "image-size": size, "batch-size": batch, "local-steps": steps, "seed": 0,
            "device": device.type, "optimizer": "adam"}
    plain, private = parse_run_config(keys), parse_run_config({**keys, "local-steps": 0, "dp-enabled": True})
    return {
        "plain": _side_by_side(lambda: _ours_plain(plain, images, device), lambda: _hand_plain(plain, images, device),
                               images=n, repeats=repeats),
        "dp": _side_by_side(lambda: _ours_dp(private, images, device), lambda: _hand_dp(private, images, device),
                            images=n, repeats=repeats),
    }


def measure_precision(*, size: int, batch: int, steps: int, repeats: int, device: torch.device) -> dict[str, Any]:
    """ResNet-18 images/s of ``train_local`` in fp32 and in ``auto``, alternating, fastest of ``repeats``."""
    n = batch * steps
    images = _images(n, size, ("glioma", "meningioma", "notumor", "pituitary"))
    keys = {"model": "resnet18", "image-size": size, "batch-size": batch, "local-steps": steps, "seed": 0,
            "device": device.type}
    fp32, auto = parse_run_config({**keys, "precision": "fp32"}), parse_run_config({**keys, "precision": "auto"})
    side = _side_by_side(lambda: _ours_plain(auto, images, device), lambda: _ours_plain(fp32, images, device),
                         images=n, repeats=repeats)
    return {"auto_precision": resolve_precision("auto", device).name, "fp32_img_s": side["hand_img_s"],
            "auto_img_s": side["ours_img_s"], "speedup": side["ratio"]}


def measure_epochs(root: str, *, size: int, epochs: int, model: str, batch: int, seed: int,
                   compile_model: bool) -> dict[str, Any]:
    """Centralised runs of ``epochs`` epochs: fp32 decoding per epoch, ``auto`` decoded once, ``auto`` compiled."""
    keys = {"model": model, "image-size": size, "batch-size": batch, "data-root": root, "seed": seed,
            "num-server-rounds": epochs, "local-epochs": 1, "optimizer-state": "keep", "lr-schedule": "cosine"}
    before = centralised_epochs(parse_run_config({**keys, "precision": "fp32", "decoded-cache-mb": 0}))
    after = centralised_epochs(parse_run_config({**keys, "precision": "auto"}))
    result: dict[str, Any] = {
        "epoch_s_fp32": before["epoch_s"][0],
        "epoch_s_auto": round(after["load_s"] + after["epoch_s"][0], 2),
        "accuracy_fp32": before["last2_mean"],
        "accuracy_auto": after["last2_mean"],
        "runs": {"fp32_decoded_per_epoch": before, "auto": after},
    }
    result["epoch_ratio"] = round(result["epoch_s_fp32"] / result["epoch_s_auto"], 3)
    if compile_model:
        compiled = centralised_epochs(parse_run_config({**keys, "precision": "auto"}), compile_model=True)
        result["runs"]["auto_compiled"] = compiled
        result["compile_ratio"] = round(sum(compiled["epoch_s"]) / sum(after["epoch_s"]), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision-size", type=int, default=128, help="image size of the precision comparison")
    parser.add_argument("--data-root", type=Path, help="the brain MRI root (train/, test/) for the epoch runs")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quick", action="store_true",
                        help="cnn3 at 32 px, batch 16, 4 steps, 2 repeats; epochs on a small synthetic set")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    torch.set_num_threads(args.threads)
    epoch_model = "resnet18"
    if args.quick:
        args.models, args.size, args.batch, args.steps, args.repeats = "cnn3", 32, 16, 4, 2
        args.precision_size, args.epochs, epoch_model = 32, 2, "cnn3"
    out = args.out or RESULTS / ("train_throughput-quick.json" if args.quick else "train_throughput.json")
    device = resolve_device(args.device)
    models = {name: measure(name, size=args.size, batch=args.batch, steps=args.steps, repeats=args.repeats,
                            device=device) for name in args.models.split(",")}
    precision = measure_precision(size=args.precision_size, batch=args.batch, steps=args.steps,
                                  repeats=args.repeats, device=device)
    epochs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root
        if args.quick:
            root = write_synthetic_tree(Path(tmp) / "mri", modality="brain-mri", train_per_class=40,
                                        test_per_class=10, size=48, seed=1)
        if root is not None:
            epochs = measure_epochs(data_root_of(root), size=args.precision_size, epochs=args.epochs,
                                    model=epoch_model, batch=32, seed=0, compile_model=not args.no_compile)
    result = {
        **provenance(),
        "device": device.type if device.type == "cpu" else f"cuda: {torch.cuda.get_device_name(device)}",
        "cpu_flags": list(cpu_bf16_flags()),
        **precision,
        "precision_size": args.precision_size,
        **{k: v for k, v in epochs.items() if k != "runs"},
        "ratio": min(m["plain"]["ratio"] for m in models.values()),
        "dp_ratio": min(m["dp"]["ratio"] for m in models.values()),
        "size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "models": models,
        "epoch_runs": epochs.get("runs", {}),
    }
    for name, m in models.items():
        print(f"{name}: plain ours {m['plain']['ours_img_s']} img/s, hand {m['plain']['hand_img_s']} img/s, "
              f"ratio {m['plain']['ratio']}; DP ours {m['dp']['ours_img_s']}, hand {m['dp']['hand_img_s']}, "
              f"ratio {m['dp']['ratio']}")
    print(f"precision auto = {result['auto_precision']} (CPU bf16 flags: {', '.join(result['cpu_flags']) or 'none'}): "
          f"{result['auto_img_s']} img/s against fp32 {result['fp32_img_s']}, speedup {result['speedup']}")
    if epochs:
        print(f"one epoch: fp32 decoding per epoch {result['epoch_s_fp32']} s, auto decoded once "
              f"{result['epoch_s_auto']} s, ratio {result['epoch_ratio']}; accuracy fp32 {result['accuracy_fp32']}, "
              f"auto {result['accuracy_auto']}; torch.compile / plain {result.get('compile_ratio', 'not run')}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"ratio {result['ratio']}, dp_ratio {result['dp_ratio']} on {result['device']}; wrote {out}")


if __name__ == "__main__":
    main()
