"""DP-SGD overhead, measured side by side with plain SGD in one run, and Opacus' grad-sample modes compared.

The same DP-compatible model (``common.privacy.make_dp_compatible``: GroupNorm, nothing in
place), the same batch and the same synthetic data are trained without DP (plain SGD) and
with DP-SGD in each mode of ``common.privacy.GRAD_SAMPLE_MODES``: medsilo's ``bk``
(book-keeping ghost clipping, ``common.privacy.clipping``, on Opacus' ghost-clipping
optimizer) and Opacus' ``hooks``, ``functorch``, ``ew`` (expanded weights) and ``ghost``
(``DPLossFastGradientClipping``, with medsilo's mixed ghost norms for Conv2d).

A mode counts as correct when one step with noise 0 matches the reference DP-SGD update,
computed independently: per-example gradients one example at a time, each clipped to
``max_grad_norm``, averaged. The chosen mode is the fastest mode that ran correctly;
``throughput_ratio`` is non-DP images/s over the chosen mode's images/s. Writes
``benchmarks/results/dp_overhead.json``.

    python benchmarks/dp_overhead.py            # resnet18, 64 px, batch 32, 1 channel, 4 classes
    python benchmarks/dp_overhead.py --quick    # resnet18, 32 px, batch 16, 3 timed steps: under 2 minutes

``--threads`` sets torch's CPU threads (default: torch's); the machine's 1-minute load
average before and after goes into the JSON, since other work skews the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import opacus
import torch
from provenance import result_path
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from common.models import build_model
from common.privacy.compat import make_dp_compatible
from common.privacy.dpsgd import GRAD_SAMPLE_MODES, make_private

NUM_CLASSES = 4
MAX_GRAD_NORM = 0.1  # small enough that clipping bites on every example of a fresh model
CHECK_BATCH = 8
REL_TOLERANCE = 1e-3


def _make_private(model: nn.Module, mode: str, *, x: torch.Tensor, y: torch.Tensor, noise: float, lr: float) -> Any:
    """``(step, cleanup)`` for ``mode`` on a fixed batch, without Poisson sampling (medsilo's own wiring)."""
    private = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=lr),
        DataLoader(TensorDataset(x, y), batch_size=len(y)),
        noise_multiplier=noise,
        max_grad_norm=MAX_GRAD_NORM,
        poisson_sampling=False,
        mode=mode,
    )
    return lambda: private.step(x, y), private.close


def _plain_step(model: nn.Module, *, x: torch.Tensor, y: torch.Tensor, lr: float) -> Any:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def _images_per_s(step: Any, *, batch: int, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def _reference_update(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], float]:
    """The noise-free DP-SGD gradient (mean of per-example clipped gradients), one example at a time."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    clipped = 0
    for i in range(len(y)):
        grads = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        factor = min(1.0, MAX_GRAD_NORM / (float(norm) + 1e-6))
        clipped += factor < 1.0
        for t, g in zip(total, grads, strict=True):
            t.add_(g, alpha=factor)
    return [t / len(y) for t in total], clipped / len(y)


def _check_mode(base: nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor, reference: list[torch.Tensor]) -> float:
    """Relative max-abs error of one noise-free DP step (SGD, lr 1) against the reference gradient."""
    model = copy.deepcopy(base)
    before = [p.detach().clone() for p in model.parameters()]
    step, cleanup = _make_private(model, mode, x=x, y=y, noise=0.0, lr=1.0)
    step()
    cleanup()
    update = [b - p.detach() for b, p in zip(before, model.parameters(), strict=True)]
    error = max(float((u - r).abs().max()) for u, r in zip(update, reference, strict=True))
    scale = max(float(r.abs().max()) for r in reference)
    return error / scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 px, batch 16, fewer steps; under 2 minutes")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=None, help="default 64 (32 with --quick)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 (16 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode; default 10 (3 with --quick)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--out", type=Path, help="default results/dp_overhead.json (--quick: dp_overhead-quick.json)")
    parser.add_argument("--modes", default=",".join(GRAD_SAMPLE_MODES), help="comma-separated grad-sample modes")
    args = parser.parse_args()
    args.out = result_path("dp_overhead", quick=args.quick, out=args.out)
    size = args.image_size or (32 if args.quick else 64)
    batch = args.batch_size or (16 if args.quick else 32)
    steps = args.steps or (3 if args.quick else 10)
    warmup = 1 if args.quick else 2
    modes = [m for m in args.modes.split(",") if m]
    torch.set_num_threads(args.threads)
    # torch's note that the first layer's input needs no gradient; benign, and once per step otherwise
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]

    base = make_dp_compatible(build_model(args.model, num_classes=NUM_CLASSES, in_channels=1, seed=0))
    params = sum(p.numel() for p in base.parameters())
    x = torch.randn(batch, 1, size, size)
    y = torch.randint(0, NUM_CLASSES, (batch,))
    print(
        f"{args.model} (GroupNorm, {params:,} parameters), {size} px, batch {batch}, {steps} timed steps, "
        f"{args.threads} thread(s), torch {torch.__version__}, opacus {opacus.__version__}"
    )

    reference, clipped_fraction = _reference_update(copy.deepcopy(base), x[:CHECK_BATCH], y[:CHECK_BATCH])
    print(f"reference: {clipped_fraction:.0%} of {CHECK_BATCH} examples clipped at max_grad_norm {MAX_GRAD_NORM}")

    def plain() -> float:
        step = _plain_step(copy.deepcopy(base), x=x, y=y, lr=0.01)
        return _images_per_s(step, batch=batch, warmup=warmup, steps=steps)

    non_dp = [plain()]
    print(f"{'non-DP':10s} {non_dp[0]:8.1f} images/s")
    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        entry: dict[str, Any] = {"ran": False, "correct": None, "images_per_s": None, "rel_error": None, "error": None}
        results[mode] = entry
        try:
            entry["rel_error"] = _check_mode(base, mode, x[:CHECK_BATCH], y[:CHECK_BATCH], reference)
            entry["correct"] = entry["rel_error"] <= REL_TOLERANCE
            step, cleanup = _make_private(copy.deepcopy(base), mode, x=x, y=y, noise=1.0, lr=0.01)
            entry["images_per_s"] = _images_per_s(step, batch=batch, warmup=warmup, steps=steps)
            cleanup()
            entry["ran"] = True
        except Exception as err:  # a mode that fails is a result, not a crash of the benchmark
            entry["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        if entry["ran"]:
            print(
                f"{mode:10s} {entry['images_per_s']:8.1f} images/s  "
                f"update error {entry['rel_error']:.1e} ({'correct' if entry['correct'] else 'WRONG'})"
            )
        else:
            print(f"{mode:10s} failed: {entry['error']}")
    # Non-DP again at the end: the machine's load drifts; the ratio uses the mean of both.
    non_dp.append(plain())
    non_dp_ips = sum(non_dp) / len(non_dp)
    print(f"{'non-DP':10s} {non_dp[1]:8.1f} images/s (again; mean {non_dp_ips:.1f})")
    for mode, entry in results.items():
        if entry["ran"]:
            entry["ratio"] = non_dp_ips / entry["images_per_s"]
            print(f"ratio non-DP / {mode:10s} {entry['ratio']:6.2f}")

    good = [m for m, e in results.items() if e["ran"] and e["correct"]]
    chosen = max(good, key=lambda m: results[m]["images_per_s"]) if good else None
    result = {
        "throughput_ratio": results[chosen]["ratio"] if chosen else None,
        "model": args.model,
        "batch_size": batch,
        "image_size": size,
        "mode": chosen,
        "quick": args.quick,
        "in_channels": 1,
        "num_classes": NUM_CLASSES,
        "params": params,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "threads": args.threads,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "device": f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "max_grad_norm": MAX_GRAD_NORM,
        "clipped_fraction": clipped_fraction,
        "correctness": f"noise-free step vs per-example clipped reference, rel. max-abs error <= {REL_TOLERANCE}",
        "non_dp_images_per_s": non_dp_ips,
        "non_dp_images_per_s_runs": non_dp,
        "modes": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if chosen:
        print(f"chosen mode: {chosen}; throughput_ratio (non-DP / DP images/s) = {result['throughput_ratio']:.2f}")
    else:
        print("no mode ran correctly")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
