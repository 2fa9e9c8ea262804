"""glip-demo end to end: node + synthetic camera + scripted queries as separate processes (short run).

The real default model is the training engineer's; here the demo runs on the tiny random-weight checkpoint,
so this proves the graph, the query script and the annotated-frame output, not detection quality.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import REPO, unique_domain_id

pytestmark = pytest.mark.ros


def test_demo_runs_the_query_script_and_writes_annotated_frames(tiny_checkpoint, tmp_path) -> None:
    path, _ = tiny_checkpoint
    out = tmp_path / "demo"
    env = dict(os.environ, ROS_DOMAIN_ID=str(unique_domain_id()), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "glip_ros.ros.demo", "--checkpoint", path, "--duration", "9",
           "--rate", "5", "--min-size", "256", "--device", "cpu", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    for n, query in enumerate(["red circle. blue square", "green triangle", ""], 1):
        assert f"[demo] query {n} {query!r} -> id" in log, log
        assert f"[demo] query {n} {query!r}: " in log and "frame(s) answered" in log
    assert "no detections (empty arrays)" in log  # the idle query
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["01_red_circle_blue_square", "02_green_triangle", "03_idle"], folders
    for f in out.iterdir():
        assert any(p.suffix == ".png" for p in f.iterdir()), f


def test_demo_stops_waiting_when_the_node_cannot_configure(tiny_checkpoint, tmp_path) -> None:
    """A preset that does not fit the checkpoint: the node lives on unconfigured and says why in /diagnostics;
    the demo reports that reason and fails instead of waiting out --wait-timeout for a service that will not
    come."""
    path, _ = tiny_checkpoint
    env = dict(os.environ, ROS_DOMAIN_ID=str(unique_domain_id()), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "glip_ros.ros.demo", "--checkpoint", path, "--preset", "glip_t_a",
           "--duration", "3", "--device", "cpu", "--out", str(tmp_path), "--wait-timeout", "150"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log
    assert "[demo] ERROR: glip_node not configured:" in log, log
    assert "did not appear" not in log, log
