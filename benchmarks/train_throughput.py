"""Images/s of the ClientApp's local training against a minimal hand-written PyTorch loop, side by side.

Same model, batch, images (decoded in memory, the same augmentation and normalisation) and
AMP setting (bf16 autocast on CUDA, none on the CPU). ``ours`` is ``client.training.train_local``
(plain) and ``common.privacy.dpsgd.train_private`` (DP-SGD, medsilo's ``bk`` clipping, Poisson
sampling); the hand-written loops are a bare ``for x, y in loader`` with cross-entropy and Adam,
and for DP the same with Opacus' ``PrivacyEngine.make_private`` (its default per-sample hooks).
Each side runs once to warm up, then ``--repeats`` times alternating with the other; the
fastest run of each counts. ``ratio`` = ours ÷ hand-written (plain), ``dp_ratio`` the same for
DP-SGD, each the lowest over the models. On CUDA both sides get ``cudnn.benchmark``,
``channels_last``, pinned memory and ``non_blocking`` copies. Writes
``benchmarks/results/train_throughput.json``.

    python benchmarks/train_throughput.py                   # resnet18 at 64 px, batch 32 (CPU size)
    python benchmarks/train_throughput.py --models resnet18,densenet121 --size 224 --batch 64   # GPU size
    python benchmarks/train_throughput.py --quick           # cnn3 at 32 px: under a minute
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client.training import train_local  # noqa: E402
from common.config import RunConfig, parse_run_config  # noqa: E402
from common.data import ImageSet, build_transform  # noqa: E402
from common.experiment import initial_model, preset_for  # noqa: E402
from common.inference import autocast, loader, resolve_device  # noqa: E402
from common.privacy.dpsgd import train_private  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"


def _images(n: int, size: int, classes: tuple[str, ...], seed: int = 0) -> ImageSet:
    """``n`` random gray images, already decoded, with balanced labels."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n) % len(classes)
    return ImageSet(pixels, labels, tuple(f"{i}.png" for i in range(n)), classes)


def _prepare(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


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
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="cnn3 at 32 px, batch 16, 4 steps, 2 repeats")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.models, args.size, args.batch, args.steps, args.repeats = "cnn3", 32, 16, 4, 2
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    models = {name: measure(name, size=args.size, batch=args.batch, steps=args.steps, repeats=args.repeats,
                            device=device) for name in args.models.split(",")}
    result = {
        "device": device.type if device.type == "cpu" else f"cuda: {torch.cuda.get_device_name(device)}",
        "ratio": min(m["plain"]["ratio"] for m in models.values()),
        "dp_ratio": min(m["dp"]["ratio"] for m in models.values()),
        "size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "amp": "bf16" if device.type == "cuda" else "none",
        "models": models,
    }
    for name, m in models.items():
        print(f"{name}: plain ours {m['plain']['ours_img_s']} img/s, hand {m['plain']['hand_img_s']} img/s, "
              f"ratio {m['plain']['ratio']}; DP ours {m['dp']['ours_img_s']}, hand {m['dp']['hand_img_s']}, "
              f"ratio {m['dp']['ratio']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"ratio {result['ratio']}, dp_ratio {result['dp_ratio']} on {result['device']}; wrote {args.out}")


if __name__ == "__main__":
    main()
