#!/usr/bin/env bash
# The GPU path, measured in one go (about 8 minutes on one datacentre GPU):
#   1. train_throughput.py for ResNet-18 and DenseNet-121 at 224 px, batch 64, plain and DP, and ResNet-18
#      in fp32 against precision = "auto" (bf16 on GPUs that have it, else fp16 with a gradient scaler);
#   2. a 2-round `flwr run` with device='cuda' precision='auto' (4 hospitals, ResNet-18, synthetic 64 px
#      data), recording the precision each hospital trained in;
# everything in one JSON file (default benchmarks/results/gpu_check.json).
# Without a CUDA GPU it writes {"gpu": false, "note": ...}, says so, and exits 0 (CI runs it).
# GPU_CHECK_ON_CPU=1 runs the same steps on the CPU at a toy size, to test this script without a GPU.
# Usage: benchmarks/gpu_check.sh [OUT.json]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu_check.json}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
mkdir -p "$(dirname "$OUT")"
GPU="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')"
DEVICE=cuda SIZE=224 BATCH=64 STEPS=20 MODELS=resnet18,densenet121 GPUS=0.25 PER_CLASS=200
if [ "${GPU_CHECK_ON_CPU:-0}" = 1 ]; then
  GPU="cpu (GPU_CHECK_ON_CPU=1: a test of this script)" DEVICE=cpu SIZE=32 BATCH=8 STEPS=2 MODELS=cnn3 GPUS=0 PER_CLASS=8
fi
if [ -z "$GPU" ]; then
  echo "gpu_check: no GPU: torch sees no CUDA device; nothing to measure here (the CPU figures are in the README)"
  printf '{"gpu": false, "note": "no CUDA device visible to torch"}\n' > "$OUT"
  exit 0
fi
WORK="$(mktemp -d)"
# Stop, by PID, every process this script's Flower home started (the local SuperLink outlives `flwr run`).
cleanup() {
  "$PY" - "$WORK/flwr" <<'PYEOF' || true
import os, sys, psutil
for p in psutil.process_iter():
    try:
        if p.pid != os.getpid() and p.environ().get("FLWR_HOME") == sys.argv[1]:
            p.kill()
    except (psutil.Error, OSError):
        pass
PYEOF
  rm -rf "$WORK"
}
trap cleanup EXIT
echo "gpu_check: $GPU"
"$PY" benchmarks/train_throughput.py --models "$MODELS" --size "$SIZE" --batch "$BATCH" --steps "$STEPS" --repeats 2 \
  --precision-size "$SIZE" --device "$DEVICE" --out "$WORK/throughput.json"
"$(dirname "$PY")/medsilo" data synth --modality brain-mri --out "$WORK/data" --train-per-class "$PER_CLASS" \
  --test-per-class 8 --size 64 >/dev/null
PORTS=($("$PY" -c 'import socket
for _ in range(2):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'))
# A SuperLink of its own on free ports: one that `make run` left on 39091 is neither used nor blocking.
export FLWR_HOME="$WORK/flwr" FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
  FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 PATH="$(dirname "$PY"):$PATH" \
  FLWR_LOCAL_SUPERLINK_HTTP_API_PORT="${PORTS[0]}" FLWR_LOCAL_CONTROL_API_PORT="${PORTS[1]}"
mkdir -p "$FLWR_HOME"
START=$(date +%s.%N)
flwr run . --stream --federation-config "num-supernodes=4 client-resources-num-cpus=1 client-resources-num-gpus=$GPUS" \
  --run-config "device='$DEVICE' precision='auto' model='resnet18' image-size=64 num-server-rounds=2 local-epochs=1 \
data-root='$WORK/data' output-dir='$WORK/runs' run-name='gpu' min-train-nodes=4" > "$WORK/flwr.log" 2>&1 || true
END=$(date +%s.%N)
"$PY" - "$WORK" "$OUT" "$GPU" "$START" "$END" <<'PYEOF'
import json, sys
from pathlib import Path
work, out, gpu, start, end = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
report = work / "runs" / "gpu" / "report.json"
run = {"completed": report.is_file(), "wall_s": round(end - start, 1)}
if report.is_file():
    run["central_accuracy"] = json.loads(report.read_text())["accuracy"]
    history = json.loads((work / "runs" / "gpu" / "history.json").read_text())
    run["train_s_per_round"] = [r["timings"].get("train_s") for r in history["rounds"][1:]]
    run["precision"] = sorted({str(h.get("precision")) for r in history["rounds"][1:] for h in r["hospitals"].values()})
else:
    run["log_tail"] = (work / "flwr.log").read_text()[-3000:]
result = {"gpu": True, "device": gpu, "train_throughput": json.loads((work / "throughput.json").read_text()),
          "flwr_run_cuda": run}
out.write_text(json.dumps(result, indent=2))
print(json.dumps(result, indent=2))
sys.exit(0 if run["completed"] else 1)
PYEOF
