"""Privacy-utility trade-off: the same federation without DP, at epsilon 8 and at epsilon 1.

Runs three real ``flwr run`` simulations side by side (same seed, data, model and
schedule; only the DP keys differ) and writes ``benchmarks/results/dp_utility.json``.

    python benchmarks/dp_utility.py --data-root ../shared/data/brain-mri
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "dp_utility.json"
SETTINGS = {
    "no DP": "dp-enabled=false",
    "epsilon 8": "dp-enabled=true dp-target-epsilon=8.0",
    "epsilon 1": "dp-enabled=true dp-target-epsilon=1.0",
}


def _stop(flwr_home: str) -> None:
    procs = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("FLWR_HOME") == flwr_home and proc.pid != os.getpid():
                procs.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for proc in procs:
        proc.terminate()
    psutil.wait_procs(procs, timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--hospitals", type=int, default=4)
    parser.add_argument(
        "--config",
        default="model='cnn3' image-size=64 num-server-rounds=3 local-epochs=1 batch-size=64 partitioner='iid' "
        "min-train-nodes=4 min-evaluate-nodes=4 fraction-evaluate=0.0 seed=7",
    )
    args = parser.parse_args()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "FLWR_HOME": tmp,
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        try:
            for name, dp in SETTINGS.items():
                run = name.replace(" ", "-")
                paths = f"data-root='{args.data_root.resolve()}' output-dir='{tmp}/runs' run-name='{run}'"
                overrides = f"{args.config} {dp} {paths}"
                start = time.perf_counter()
                subprocess.run(
                    [
                        str(Path(sys.executable).parent / "flwr"),
                        "run",
                        str(REPO),
                        "--stream",
                        "--federation-config",
                        f"num-supernodes={args.hospitals}",
                        "--run-config",
                        overrides,
                    ],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                report = json.loads((Path(tmp) / "runs" / run / "report.json").read_text())
                history = json.loads((Path(tmp) / "runs" / run / "history.json").read_text())
                last = history["rounds"][-1]["hospitals"]
                epsilons = [h["epsilon"] for h in last.values() if h.get("epsilon") is not None]
                results[name] = {
                    "accuracy": report["accuracy"],
                    "balanced_accuracy": report["balanced_accuracy"],
                    "macro_f1": report["macro"]["f1"],
                    "max_epsilon_spent": max(epsilons) if epsilons else None,
                    "seconds": time.perf_counter() - start,
                }
                print(f"{name:10s} accuracy {report['accuracy']:.4f}  epsilon {results[name]['max_epsilon_spent']}")
        finally:
            _stop(tmp)
    base = results["no DP"]["accuracy"]
    for row in results.values():
        row["accuracy_ratio_to_no_dp"] = row["accuracy"] / base
    output = {"data_root": str(args.data_root), "hospitals": args.hospitals, "config": args.config, "results": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(output, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
