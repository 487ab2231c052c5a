"""The GPU check and the training-throughput benchmark run on a CPU-only machine (so CI can run both)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would measure it")
def test_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "no GPU" in proc.stdout
    assert json.loads(out.read_text()) == {"gpu": False, "note": "no CUDA device visible to torch"}


@pytest.mark.slow
def test_train_throughput_writes_its_ratios(tmp_path: Path) -> None:
    out = tmp_path / "train_throughput.json"
    args = ["--models", "cnn3", "--size", "32", "--batch", "4", "--steps", "1", "--repeats", "1", "--device", "cpu",
            "--precision-size", "32"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and set(result) >= {"machine", "date", "commit"}
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
    assert set(result["cpu_flags"]) == flags & {"amx_bf16", "amx_tile", "avx512_bf16"}
    native = "avx512_bf16" in flags or {"amx_bf16", "amx_tile"} <= flags
    assert result["auto_precision"] == ("bf16" if native else "fp32")
    assert result["speedup"] == pytest.approx(result["auto_img_s"] / result["fp32_img_s"], rel=1e-2)
    assert "epoch_s_fp32" not in result  # the epoch runs need --data-root (or --quick)
    for side in ("plain", "dp"):
        row = result["models"]["cnn3"][side]
        assert row["ours_img_s"] > 0 and row["hand_img_s"] > 0
        assert row["ratio"] == pytest.approx(row["ours_img_s"] / row["hand_img_s"], rel=1e-2)
    assert result["ratio"] == result["models"]["cnn3"]["plain"]["ratio"]
    assert result["dp_ratio"] == result["models"]["cnn3"]["dp"]["ratio"]
