"""Encrypted FedAvg against float64 plaintext FedAvg: bytes, error, server memory, round time.

Uses the real code paths: the hospital's ``encrypt_update`` / ``decode_global``
(client.crypto) and the server's ``EncryptedFedAvg`` against ``MedsiloFedAvg``.

- ``bytes_per_param_up`` / ``_down``: one hospital's encrypted update, and the aggregate.
- ``max_abs_error_10`` / ``_100``: the decrypted aggregate against float64 FedAvg of the same
  updates (BatchNorm counters and variances at large values included, before rounding).
- ``server_peak_rss_gib``: peak RSS of a separate server process (it imports the ServerApp)
  that aggregates 10 updates handed to it one at a time, as ``stream_replies`` pulls them.
- ``round_time_ratio_default`` / ``_full``: one round with HE over one round without, side by
  side (same training seeds): the default run's workload (sample data, 4 hospitals x 8
  batches at 48 px) and the full brain MRI set at 128 px (4 hospitals, 1 local epoch).

    python benchmarks/he_overhead.py --data-dir DATA   # DATA holds brain-mri/; ResNet-18, ~15 minutes on 2 cores
    python benchmarks/he_overhead.py --quick                     # cnn3, no full workload, ~1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message
from flwr.supercore.task_identity import TaskIdentity

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from he_server_probe import reply, strategy  # noqa: E402
from provenance import provenance, result_path  # noqa: E402

from client.crypto import decode_global, encrypt_update  # noqa: E402
from client.training import train_local  # noqa: E402
from common.config import RunConfig, parse_run_config  # noqa: E402
from common.data import ImageSet, load_split  # noqa: E402
from common.he.ckks import CiphertextSum  # noqa: E402
from common.he.codec import ParamLayout, decrypt_chunks  # noqa: E402
from common.he.keys import create_key_pair, load_public_context, load_secret_context  # noqa: E402
from common.he.payload import EncryptedPayload  # noqa: E402
from common.models import build_model, state_dict_to_cpu  # noqa: E402
from common.presets import get_preset  # noqa: E402
from server.history import RunHistory  # noqa: E402
from server.roster import NodeRoster  # noqa: E402
from server.strategy import MedsiloFedAvg  # noqa: E402

GIB = 1024**3


def _record_bytes(record: ArrayRecord) -> int:
    return sum(len(a.data) for a in record.values())


def _hospital_state(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A trained-looking update: weights moved, BatchNorm variances up to 50, step counters near 5000."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in state.items():
        if name.endswith("num_batches_tracked"):
            out[name] = value + 5000 + int(torch.randint(0, 100, (), generator=g))
        elif name.endswith("running_var"):
            out[name] = torch.rand(value.shape, generator=g) * 50
        else:
            out[name] = value + 0.05 * torch.randn(value.shape, generator=g)
    return out


def _counts(hospitals: int) -> list[int]:
    return [int(c) for c in np.random.default_rng(hospitals).integers(50, 500, size=hospitals)]


def wire_error_and_memory(arch: str, secret, public, keys_dir: Path, workers: int) -> dict[str, float]:
    """10 hospitals: bytes up and down, error against float64 FedAvg, the server process's peak RSS."""
    state = state_dict_to_cpu(build_model(arch, num_classes=4, in_channels=1, seed=0))
    layout = ParamLayout.of(state)
    counts = _counts(10)
    weights = np.array(counts, dtype=np.float64) / sum(counts)
    reference = np.zeros(layout.size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "public.ctx").write_bytes((keys_dir / "public.ctx").read_bytes())
        (folder / "meta.json").write_text(json.dumps({"layout": layout.to_json(), "counts": counts}))
        encrypt_s = []
        for i, w in enumerate(weights):
            hospital = _hospital_state(state, seed=i)
            reference += w * layout.flatten(hospital)
            record, seconds = encrypt_update(hospital, ctx=secret, weight=float(w), workers=workers)
            encrypt_s.append(seconds)
            up = _record_bytes(record)
            np.savez(folder / f"reply-{i}.npz", **{k: a.numpy() for k, a in record.items()})
            del record
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "he_server_probe.py"), str(folder)], check=True)
        server_s = time.perf_counter() - start
        with np.load(folder / "aggregate.npz") as saved:
            aggregate = ArrayRecord({k: Array(saved[k]) for k in saved.files})
        rss = json.loads((folder / "rss.json").read_text())
    payload = EncryptedPayload.from_record(aggregate)
    start = time.perf_counter()
    raw = decrypt_chunks(secret, payload.chunks, size=layout.size, workers=workers) * payload.factor
    decrypt_s = time.perf_counter() - start
    mparams = layout.size / 1e6
    return {
        "params": layout.size,
        "bytes_per_param_up": up / layout.size,
        "bytes_per_param_down": _record_bytes(aggregate) / layout.size,
        "max_abs_error_10": float(np.abs(raw - reference).max()),
        "server_peak_rss_gib": rss["peak_rss_gib"],
        "server_rss_after_imports_gib": rss["baseline_rss_gib"],
        "server_process_s": server_s,
        "encrypt_s_per_mparam": float(np.mean(encrypt_s)) / mparams,
        "decrypt_s_per_mparam": decrypt_s / mparams,
    }


def error_100(arch: str, secret, public) -> float:
    """100 hospitals summed reply by reply; max |decrypted - float64 FedAvg| before rounding."""
    state = state_dict_to_cpu(build_model(arch, num_classes=4, in_channels=1, seed=0))
    layout = ParamLayout.of(state)
    counts = _counts(100)
    weights = np.array(counts, dtype=np.float64) / sum(counts)
    total, reference = CiphertextSum(public.codec), np.zeros(layout.size)
    for i, w in enumerate(weights):
        hospital = _hospital_state(state, seed=1000 + i)
        reference += w * layout.flatten(hospital)
        record, _ = encrypt_update(hospital, ctx=secret, weight=float(w), workers=os.cpu_count() or 1)
        total.add(EncryptedPayload.from_record(record).chunks)
    got = decrypt_chunks(secret, list(total.release()), size=layout.size, workers=os.cpu_count() or 1)
    return float(np.abs(got - reference).max())


def _shards(root: Path, cfg: RunConfig, hospitals: int) -> list[ImageSet]:
    preset = get_preset(cfg.dataset)
    train = load_split(root, "train", classes=preset.classes, channels=preset.channels, size=cfg.image_size)
    order = np.random.default_rng(0).permutation(len(train))
    return [train.subset(sorted(int(i) for i in part)) for part in np.array_split(order, hospitals)]


def round_pair(cfg: RunConfig, shards: list[ImageSet], secret, public, workers: int) -> tuple[float, float]:
    """Seconds of one plaintext round and one encrypted round of the same training."""
    preset = get_preset(cfg.dataset)
    state = state_dict_to_cpu(build_model(cfg.model, num_classes=len(preset.classes), in_channels=preset.channels))
    layout = ParamLayout.of(state)
    counts = [len(s) for s in shards]

    def train(i: int) -> dict[str, torch.Tensor]:
        net = build_model(cfg.model, num_classes=len(preset.classes), in_channels=preset.channels)
        net.load_state_dict(state)
        train_local(net, shards[i], cfg=cfg, preset=preset, device=torch.device("cpu"), seed=i)
        return state_dict_to_cpu(net)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        plain = MedsiloFedAvg(history=RunHistory(Path(tmp) / "p.json"), min_train_nodes=1, min_available_nodes=1)
        plain._sent = ArrayRecord(state)
        replies = (reply(i + 1, ArrayRecord(train(i)), n) for i, n in enumerate(counts))
        arrays, _ = plain.aggregate_train(1, replies)
        arrays.to_torch_state_dict()
        plain_s = time.perf_counter() - start

        start = time.perf_counter()
        roster = NodeRoster({i + 1: n for i, n in enumerate(counts)}, {}, evaluator=99)
        encrypted = strategy(public, layout, roster, Path(tmp) / "e.json")

        def he_replies() -> Iterator[Message]:
            for i, n in enumerate(counts):
                record, _ = encrypt_update(train(i), ctx=secret, weight=n / sum(counts), workers=workers)
                yield reply(i + 1, record, n)

        aggregate, _ = encrypted.aggregate_train(1, he_replies())
        decode_global(aggregate, layout=layout, ctx=secret, workers=workers)
        he_s = time.perf_counter() - start
    return plain_s, he_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="cnn3, and no full-data workload")
    parser.add_argument("--out", type=Path, help="default results/he_overhead.json (--quick: he_overhead-quick.json)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encryption processes per hospital")
    parser.add_argument("--data-dir", type=Path, help="holds brain-mri/ (the full workload; skipped without it)")
    args = parser.parse_args()
    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        setattr(TaskIdentity, name, value)
    arch = "cnn3" if args.quick else "resnet18"
    result: dict[str, object] = {"model": arch, "workers": args.workers, "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        secret_path, public_path = create_key_pair(tmp)
        secret, public = load_secret_context(secret_path), load_public_context(public_path)
        result.update(wire_error_and_memory(arch, secret, public, Path(tmp), args.workers))
        print(f"up {result['bytes_per_param_up']:.3f} B/param, down {result['bytes_per_param_down']:.3f} B/param")
        print(
            f"max error 10: {result['max_abs_error_10']:.2e}; server peak RSS {result['server_peak_rss_gib']:.2f} GiB"
        )
        result["max_abs_error_100"] = error_100(arch, secret, public)
        print(f"max error 100: {result['max_abs_error_100']:.2e}")

        workloads = {"default": (REPO / "data" / "samples", {"image-size": 48, "local-steps": 8})}
        if not args.quick:
            full = args.data_dir or Path("--data-dir not given")
            workloads["full"] = (full, {"image-size": 128, "local-steps": 0, "local-epochs": 1})
        for name, (root, overrides) in workloads.items():
            cfg = parse_run_config({"model": arch, "batch-size": 32, **overrides})
            if not (root / "brain-mri" / "train").is_dir():
                result[f"round_time_ratio_{name}"] = None
                print(f"{name}: {root / 'brain-mri'} not found; skipped")
                continue
            shards = _shards(root / "brain-mri", cfg, hospitals=4)
            plain_s, he_s = round_pair(cfg, shards, secret, public, args.workers)
            result[f"round_time_ratio_{name}"] = he_s / plain_s
            result[f"round_{name}"] = {
                "plain_s": plain_s,
                "he_s": he_s,
                "workload": f"4 hospitals, {sum(map(len, shards))} images at {cfg.image_size} px, "
                + (f"{cfg.local_steps} batches" if cfg.local_steps else f"{cfg.local_epochs} epoch(s)")
                + f" of {cfg.batch_size}, {arch}, CPU",
            }
            print(f"{name}: HE round {he_s:.1f} s / plaintext round {plain_s:.1f} s = {he_s / plain_s:.3f}")
    out = result_path("he_overhead", quick=args.quick, out=args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**provenance(), **result}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
