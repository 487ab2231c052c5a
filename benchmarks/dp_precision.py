"""Is DP-SGD's clipping exact under bf16 autocast? Per-example norms and clipped sums against float32.

DP-SGD's guarantee rests on one bound: each example adds at most ``C`` (``dp-max-grad-norm``)
to the clipped sum. This measures, on the DP variant of a model (GroupNorm), one batch, the
same weights and images in both precisions:

- ``norm_rel_err``: the largest relative error of the per-example gradient norms under bf16
  autocast, against float32;
- ``sum_rel_err``: the relative error (Frobenius, all parameters) of the clipped sum;
- ``max_contribution_over_c``: the largest float32 norm of what one example adds under the
  bf16 pipeline (its clipping factor from the bf16 norm times its float32 gradient), over
  ``C``. Above 1 the sensitivity bound that the accountant assumes is broken.

For medsilo's book-keeping clipper (``bk``, what medsilo trains with) and Opacus' per-sample
hooks (``hooks``). The clipping bound is set to a fifth of the median norm, so that every
example is clipped, as in practice. Writes ``benchmarks/results/dp_precision.json``.

    python benchmarks/dp_precision.py             # resnet18 and cnn3 at 64 px, batch 16
    python benchmarks/dp_precision.py --quick     # cnn3 at 32 px, batch 8
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provenance import provenance  # noqa: E402

from common.models import ModelSpec, build_from_spec  # noqa: E402
from common.precision import Precision  # noqa: E402
from common.privacy.clipping import BookKeepingClipper  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODES = ("bk", "hooks")
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
BF16_UNIT_ROUNDOFF = 2.0**-8
"""bf16 keeps 8 bits of mantissa: one rounding is off by at most this, relatively."""


def _per_example_fp32(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Each example's whole gradient, flattened, in float32 by per-example autograd (the reference)."""
    params = [p for p in model.parameters() if p.requires_grad]
    losses = F.cross_entropy(model(x), y, reduction="none")
    grads = [torch.autograd.grad(losses[i], params, retain_graph=True) for i in range(len(y))]
    return [torch.cat([g.reshape(-1) for g in example]) for example in grads]


def _bk(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: float, precision: Precision) -> tuple[Any, Any]:
    """Book-keeping under ``precision``: per-example norms and the flattened clipped sum."""
    clipper = BookKeepingClipper(model, max_grad_norm=c)
    try:
        inputs = x.detach().requires_grad_(True)
        with precision.autocast():
            logits = model(inputs)
        norms = clipper.backward(F.cross_entropy(logits.float(), y, reduction="none"), inputs)
    finally:
        clipper.remove()
    total = torch.cat([p.grad.float().reshape(-1) for p in model.parameters() if p.requires_grad])
    model.zero_grad(set_to_none=True)
    return norms.float(), total


def _hooks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: float, precision: Precision) -> tuple[Any, Any]:
    """Opacus' per-sample hooks under ``precision``: per-example norms and the flattened clipped sum."""
    from opacus import GradSampleModule

    wrapped = GradSampleModule(model, loss_reduction="sum")
    try:
        with precision.autocast():
            logits = wrapped(x)
        F.cross_entropy(logits.float(), y, reduction="sum").backward()
        samples = [p.grad_sample.float().reshape(len(y), -1) for p in model.parameters() if p.requires_grad]
    finally:
        wrapped._close()
    per_example = torch.cat(samples, dim=1)
    norms = per_example.norm(dim=1)
    coef = (c / (norms + 1e-6)).clamp(max=1.0)
    for p in model.parameters():
        p.grad, p.grad_sample = None, None
    return norms, (coef[:, None] * per_example).sum(dim=0)


def measure(architecture: str, *, size: int, batch: int, seed: int) -> dict[str, Any]:
    """Each clipping mode's bf16 errors against float32 on one batch of ``architecture``'s DP variant."""
    spec = ModelSpec(architecture, CLASSES, size, 1, (0.5,), (0.25,), dp_compatible=True)
    model = build_from_spec(spec, seed=seed).train()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, size, size, generator=generator)
    y = torch.arange(batch) % len(CLASSES)
    reference = _per_example_fp32(model, x, y)
    true_norms = torch.stack([g.norm() for g in reference])
    c = float(true_norms.median()) / 5
    true_sum = sum((c / (n + 1e-6)).clamp(max=1.0) * g for n, g in zip(true_norms, reference, strict=True))
    out: dict[str, Any] = {"max_grad_norm": round(c, 6), "batch": batch, "size": size}
    for mode, clip in (("bk", _bk), ("hooks", _hooks)):
        row: dict[str, Any] = {}
        for name in ("fp32", "bf16"):
            try:
                norms, clipped = clip(model, x, y, c, Precision(name, "cpu"))
            except (RuntimeError, NotImplementedError) as err:  # a mode that cannot run under autocast
                row[name] = {"error": str(err).splitlines()[0][:200]}
                continue
            coef = (c / (norms + 1e-6)).clamp(max=1.0)
            contribution = torch.stack([(k * g).norm() for k, g in zip(coef, reference, strict=True)])
            errors = {
                "norm_rel_err": float(((norms - true_norms).abs() / true_norms).max()),
                "sum_rel_err": float((clipped - true_sum).norm() / true_sum.norm()),
                "max_contribution_over_c": float(contribution.max() / c),
            }
            errors["exact_to_bf16_rounding"] = (
                max(errors["norm_rel_err"], errors["sum_rel_err"]) <= BF16_UNIT_ROUNDOFF
                and errors["max_contribution_over_c"] <= 1.0 + 1e-4  # float32 rounding of the reference
            )
            row[name] = errors
        out[mode] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,cnn3")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="cnn3 at 32 px, batch 8")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.models, args.size, args.batch = "cnn3", 32, 8
    out = args.out or RESULTS / ("dp_precision-quick.json" if args.quick else "dp_precision.json")
    torch.set_num_threads(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {m: measure(m, size=args.size, batch=args.batch, seed=args.seed) for m in args.models.split(",")}
    exact = all(row[mode]["bf16"].get("exact_to_bf16_rounding", False) for row in models.values() for mode in MODES)
    result = {**provenance(), "bf16_unit_roundoff": BF16_UNIT_ROUNDOFF, "bf16_exact": exact,
              "dp_trains_in": "bf16" if exact else "fp32", "models": models}
    for name, row in models.items():
        for mode in MODES:
            for precision, errors in row[mode].items():
                print(f"{name} {mode} {precision}: {errors}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"bf16 exact under DP: {exact}; DP-SGD trains in {result['dp_trains_in']}; wrote {out}")


if __name__ == "__main__":
    main()
