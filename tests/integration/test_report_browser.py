"""A real run's report.html in headless Chromium: it renders, requests nothing, and shows report.json's numbers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from flower_env import SimulatedRun
from PIL import Image
from report_page import flatten, read_page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking")
FIGURES = {
    "confusion_matrix.png",
    "roc_curves.png",
    "pr_curves.png",
    "reliability.png",
    "learning_curves.png",
    "class_distribution.png",
    "gradcam.png",
}

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium or chromium-browser binary on PATH")


def _screenshot(page: Path, tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    """Open ``page`` in headless Chromium; return the screenshot and the URLs the page itself requested."""
    shot, net_log = tmp_path / f"{name}.png", tmp_path / f"{name}-net.json"
    proc = subprocess.run(
        [
            str(CHROMIUM),
            *FLAGS,
            f"--user-data-dir={tmp_path / f'{name}-profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            f"--log-net-log={net_log}",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    # The browser's own background fetches have no initiating origin; the page's have its (file://) origin.
    jobs = [e.get("params", {}) for e in log["events"] if e["type"] == start_job]
    requested = [job.get("url", "") for job in jobs if job.get("initiator") != "not an origin"]
    return shot, [u for u in requested if re.match(r"(https?|wss?|ftp)://", u)]


def test_report_html_opens_offline_in_headless_chromium(simulated_run: SimulatedRun, tmp_path: Path) -> None:
    run_dir = simulated_run.run_dir
    assert "round 3/3: 3 hospital(s) trained in" in simulated_run.output
    assert {p.name for p in (run_dir / "figures").iterdir()} == FIGURES

    html = (run_dir / "report.html").read_text()
    page = read_page(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    numbers = {k: v for k, v in flatten(report).items() if not isinstance(v, str | bool)}  # names, flags
    expected = {k: v for k, v in numbers.items() if not k.startswith("classes.")}
    assert set(page.keyed) == set(expected)
    for key, value in expected.items():
        raw, _ = page.keyed[key]
        assert (raw == "null") if value is None else (float(raw) == value), key
    assert not re.search(r"https?://", html)
    links = [value for _, name, value in page.attrs if name in ("src", "href")]
    assert all(link.startswith(("data:image/png;base64,", "#")) for link in links)

    shot, requested = _screenshot(run_dir / "report.html", tmp_path, "report")
    assert requested == []
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 20 and (pixels.min(axis=2) < 200).mean() > 0.05
    assert len(np.unique(pixels.reshape(-1, 3).astype(np.uint8), axis=0)) > 200

    # The detector itself: a page that loads an external image must be caught.
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><p>control</p><img src="http://example.invalid/x.png">')
    assert _screenshot(control, tmp_path, "control")[1] == ["http://example.invalid/x.png"]
