"""Many simulated hospitals: peak memory and time per hospital-round in a real ``flwr run``.

For each hospital count: ``cnn3`` at 32 px on synthetic brain-MRI-like data, 8 training
images per hospital, 2 rounds of 1 local epoch, no hospital-side evaluation, under a Flower
home and SuperLink ports of its own. A sampler sums the RSS of every process of that Flower
home (SuperLink, simulation, Ray and its actors) ten times a second; a round's time is the sum
of its steps in the run's ``history.json`` (training, aggregation, central evaluation). Ray
gets ``client-resources-num-cpus=1``, so a 2-core machine runs two hospitals at a time, each
actor about 1 GiB. Writes
``benchmarks/results/scale.json``: ``{"runs": [{"hospitals", "peak_rss_gib", "s_per_round",
"s_per_hospital_round", "completed"}]}``.

    python benchmarks/scale.py                      # 10, 100 and 1000 hospitals
    python benchmarks/scale.py --hospitals 10,100   # a subset
    python benchmarks/scale.py --quick              # 10 hospitals
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flower_home import flwr_run  # noqa: E402
from provenance import provenance, result_path  # noqa: E402

from common.data.synth import write_synthetic_tree  # noqa: E402

IMAGES_PER_HOSPITAL = 8


def run_one(hospitals: int, work: Path, timeout: float) -> dict[str, Any]:
    """One 2-round simulation with ``hospitals`` simulated hospitals."""
    per_class = max(1, hospitals * IMAGES_PER_HOSPITAL // 4)
    data = write_synthetic_tree(
        work / f"data-{hospitals}", modality="brain-mri", train_per_class=per_class, test_per_class=8, size=32, seed=1
    )
    config = (
        f"model='cnn3' image-size=32 batch-size=8 local-epochs=1 num-server-rounds=2 fraction-evaluate=0.0 "
        f"min-train-nodes={hospitals} partitioner='iid' local-val-fraction=0.0 round-timeout=3600 "
        f"data-root='{data}' output-dir='{work / 'runs'}' run-name='h{hospitals}'"
    )
    run = flwr_run(
        work / f"flwr-{hospitals}",
        federation=f"num-supernodes={hospitals} client-resources-num-cpus=1",
        config=config,
        cwd=work,
        timeout=timeout,
        sample_rss=True,
    )
    history_file = work / "runs" / f"h{hospitals}" / "history.json"
    completed = (work / "runs" / f"h{hospitals}" / "report.json").is_file()
    result: dict[str, Any] = {
        "hospitals": hospitals,
        "completed": completed,
        "wall_s": round(run.wall_s, 1),
        "peak_rss_gib": round(run.peak_rss / 2**30, 3),
    }
    if completed:
        rounds = json.loads(history_file.read_text())["rounds"][1:]
        per_round = [sum(v for k, v in r["timings"].items() if k.endswith("_s")) for r in rounds]  # every step
        result["s_per_round"] = round(sum(per_round) / len(per_round), 2)
        result["s_per_hospital_round"] = round(result["s_per_round"] / hospitals, 4)
        steps = sorted({k for r in rounds for k in r["timings"] if k.endswith("_s")})
        result["steps_s"] = {k: round(sum(r["timings"].get(k, 0.0) for r in rounds) / len(rounds), 2) for k in steps}
    else:
        result["log_tail"] = run.output[-2000:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", default="10,100,1000")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per simulation")
    parser.add_argument("--quick", action="store_true", help="10 hospitals only")
    parser.add_argument("--out", type=Path, help="default results/scale.json (--quick: scale-quick.json)")
    args = parser.parse_args()
    args.out = result_path("scale", quick=args.quick, out=args.out)
    counts = [10] if args.quick else [int(n) for n in args.hospitals.split(",")]
    work = Path(tempfile.mkdtemp(prefix="medsilo-scale-"))
    runs = []
    try:
        for n in counts:
            runs.append(run_one(n, work, args.timeout))
            row = runs[-1]
            print(
                f"{n} hospitals: completed {row['completed']}, peak RSS {row['peak_rss_gib']} GiB, "
                f"{row.get('s_per_round')} s/round, {row.get('s_per_hospital_round')} s/hospital-round",
                flush=True,
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({**provenance(), "runs": runs}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    done = {r["hospitals"]: r for r in runs if r["completed"]}
    if 100 in done and 1000 in done:
        ratio = done[1000]["s_per_hospital_round"] / done[100]["s_per_hospital_round"]
        print(f"s per hospital-round, 1000 / 100: {ratio:.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
