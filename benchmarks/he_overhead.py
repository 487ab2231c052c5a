"""Encrypted FedAvg overhead, measured side by side with plaintext FedAvg in one run.

Uses the real code paths: the hospital's ``encrypt_update`` / ``decode_global``
(client.crypto), and the server's ``EncryptedFedAvg`` against ``MedsiloFedAvg``. Writes
``benchmarks/results/he_overhead.json``.

    python benchmarks/he_overhead.py            # ResNet-18 (11.2 M parameters)
    python benchmarks/he_overhead.py --quick    # cnn3, under 2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.crypto import decode_global, encrypt_update
from client.training import train_local
from common.config import parse_run_config
from common.data.images import ImageSet
from common.he.codec import ParamLayout
from common.he.keys import create_key_pair, load_public_context, load_secret_context
from common.he.payload import EncryptedPayload
from common.models import build_model, state_dict_to_cpu
from common.presets import get_preset
from server.encrypted_strategy import EncryptedFedAvg
from server.history import RunHistory
from server.roster import NodeRoster
from server.strategy import MedsiloFedAvg

RESULTS = Path(__file__).parent / "results" / "he_overhead.json"


def _reply(node: int, arrays: ArrayRecord, n_k: int) -> Message:
    sent = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node, message_type="train")
    metrics = MetricRecord({"num-examples": n_k})
    return Message(
        RecordDict({"arrays": arrays, "metrics": metrics, "hospital": ConfigRecord({"name": f"h{node}"})}),
        reply_to=sent,
    )


def _images(n: int, size: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (n,), generator=g)
    return ImageSet(images, labels, tuple(f"{i}.png" for i in range(n)), get_preset("brain-mri").classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="cnn3 instead of resnet18; under 2 minutes")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encryption processes per hospital")
    args = parser.parse_args()
    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        setattr(TaskIdentity, name, value)
    # The full workload is the default run's: ResNet-18 at 96 px, ~256 images per hospital, 2 local epochs.
    arch, size, images_per_hospital, epochs = ("cnn3", 32, 64, 1) if args.quick else ("resnet18", 96, 256, 2)
    hospitals_for_error = 10
    torch.manual_seed(0)
    model = build_model(arch, num_classes=4, in_channels=1, seed=0)
    state = state_dict_to_cpu(model)
    layout = ParamLayout.of(state)
    params = layout.size
    print(f"{arch}: {params:,} values, {args.workers} worker process(es)")

    with tempfile.TemporaryDirectory() as tmp:
        secret_path, public_path = create_key_pair(tmp)
        secret, public = load_secret_context(secret_path), load_public_context(public_path)

        # Encrypt / aggregate / decrypt costs, and the error against plaintext FedAvg of 10 hospitals.
        rng = np.random.default_rng(1)
        counts = [int(c) for c in rng.integers(50, 500, size=hospitals_for_error)]
        roster = NodeRoster({i + 1: n for i, n in enumerate(counts)}, {}, evaluator=99)
        states = [
            {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
            for _ in counts
        ]
        encrypt_s, replies = [], []
        for i, (s, n) in enumerate(zip(states, counts, strict=True)):
            record, seconds = encrypt_update(s, ctx=secret, weight=n / sum(counts), workers=args.workers)
            encrypt_s.append(seconds)
            replies.append(_reply(i + 1, record, n))
        wire_bytes = sum(len(a.data) for a in replies[0].content["arrays"].values())
        strategy = EncryptedFedAvg(
            history=RunHistory(Path(tmp) / "h.json"),
            public=public,
            layout=layout,
            roster=roster,
            base_config=ConfigRecord(),
            seed=0,
            min_train_nodes=1,
            min_available_nodes=1,
        )
        start = time.perf_counter()
        aggregate, _ = strategy.aggregate_train(1, replies)
        aggregate_s = time.perf_counter() - start
        del replies
        start = time.perf_counter()
        decrypted, _ = decode_global(aggregate, layout=layout, ctx=secret, workers=args.workers)
        decrypt_s = time.perf_counter() - start
        weights = np.array(counts, dtype=np.float64) / sum(counts)
        reference = sum(w * layout.flatten(s) for w, s in zip(weights, states, strict=True))
        got = layout.flatten(decrypted)
        is_float = np.concatenate(
            [
                np.full(int(np.prod(shape)), dtype.startswith(("float", "bfloat")))
                for shape, dtype in zip(layout.shapes, layout.dtypes, strict=True)
            ]
        )
        max_abs_error = float(np.abs(got - reference)[is_float].max())
        aggregate_bytes = sum(len(a.data) for a in aggregate.values())
        print(f"max |HE - plaintext FedAvg| over {hospitals_for_error} hospitals: {max_abs_error:.2e}")

        # One simulated round side by side: 3 hospitals train, then plaintext vs encrypted FedAvg.
        cfg = parse_run_config({"model": arch, "image-size": size, "local-epochs": epochs, "batch-size": 32})
        preset = get_preset("brain-mri")
        data = [_images(images_per_hospital, size, seed) for seed in range(3)]

        def train(i: int, global_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            net = build_model(arch, num_classes=4, in_channels=1)
            net.load_state_dict(global_state)
            train_local(net, data[i], cfg=cfg, preset=preset, device=torch.device("cpu"), seed=i)
            return state_dict_to_cpu(net)

        roster3 = NodeRoster({i + 1: images_per_hospital for i in range(3)}, {}, evaluator=99)
        start = time.perf_counter()
        plain = MedsiloFedAvg(history=RunHistory(Path(tmp) / "p.json"), min_train_nodes=1, min_available_nodes=1)
        plain._sent = ArrayRecord(state)
        replies = [_reply(i + 1, ArrayRecord(train(i, state)), images_per_hospital) for i in range(3)]
        plain_arrays, _ = plain.aggregate_train(1, replies)
        plain_arrays.to_torch_state_dict()
        plain_round_s = time.perf_counter() - start

        start = time.perf_counter()
        enc = EncryptedFedAvg(
            history=RunHistory(Path(tmp) / "e.json"),
            public=public,
            layout=layout,
            roster=roster3,
            base_config=ConfigRecord(),
            seed=0,
            min_train_nodes=1,
            min_available_nodes=1,
        )
        replies = []
        for i in range(3):
            record, _ = encrypt_update(train(i, state), ctx=secret, weight=1 / 3, workers=args.workers)
            replies.append(_reply(i + 1, record, images_per_hospital))
        enc_arrays, _ = enc.aggregate_train(1, replies)
        decode_global(enc_arrays, layout=layout, ctx=secret, workers=args.workers)
        he_round_s = time.perf_counter() - start
        assert EncryptedPayload.from_record(enc_arrays).kind == "aggregate"

    mparams = params / 1e6
    result = {
        "model": arch,
        "params": params,
        "bytes_per_param": wire_bytes / params,
        "aggregate_bytes_per_param": aggregate_bytes / params,
        "max_abs_error": max_abs_error,
        "hospitals_for_error": hospitals_for_error,
        "encrypt_s_per_mparam": float(np.mean(encrypt_s)) / mparams,
        "aggregate_s_per_mparam_per_client": aggregate_s / mparams / hospitals_for_error,
        "decrypt_s_per_mparam": decrypt_s / mparams,
        "plain_round_s": plain_round_s,
        "he_round_s": he_round_s,
        "round_time_ratio": he_round_s / plain_round_s,
        "round_workload": f"3 hospitals x {images_per_hospital} images at {size} px, {epochs} local epoch(s), CPU",
        "workers": args.workers,
        "quick": args.quick,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    for key in (
        "bytes_per_param",
        "max_abs_error",
        "encrypt_s_per_mparam",
        "aggregate_s_per_mparam_per_client",
        "decrypt_s_per_mparam",
        "round_time_ratio",
    ):
        print(f"{key:36s} {result[key]:.4g}")
    print(f"HE round {he_round_s:.2f}s vs plaintext round {plain_round_s:.2f}s; wrote {RESULTS}")


if __name__ == "__main__":
    main()
