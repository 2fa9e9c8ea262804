"""Two cameras, one model slower than the cameras (issue 3 acceptance 3).

Two 30 Hz streams into one glip_node (cameras [cam_a, cam_b], best-effort image QoS as deployed). The model
cannot keep up, so the node must drop frames (and count them), serve both cameras equally, keep latency
bounded (latest frame wins, no queue), keep memory flat, and batch frames of both cameras into one model call
when max_batch allows. The default suite runs a short version; the 2-minute soak is marked slow.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
import pytest

from .conftest import REPO, FrameStreamer, stamp_ns, start_node, wait_for

pytestmark = pytest.mark.ros

CAMERAS = ("cam_a", "cam_b")
W, H = 320, 240


@pytest.fixture(scope="module")
def multi(request: pytest.FixtureRequest, tiny_checkpoint: tuple[str, str]):
    path, preset = tiny_checkpoint
    # The shipped params file first (proves it loads into the node), then the test's overrides.
    params_file = os.path.join(REPO, "config", "glip.yaml")
    params = {
        "checkpoint": path,
        "preset": preset,
        "device": "cpu",
        "min_size": 320,
        "cameras": list(CAMERAS),
        "max_batch": 1,
        "query": "red circle. blue square",
        "diagnostics_period": 1.0,
    }
    yield from start_node(request, params, extra_args=["--params-file", params_file])


class PerCamera:
    """Receive time, header stamp and test-side latency of every answer, per camera."""

    def __init__(self, client: Any) -> None:
        from vision_msgs.msg import Detection2DArray

        self.lock = threading.Lock()
        self.rx: dict[str, list[tuple[float, int, float]]] = {c: [] for c in CAMERAS}
        self.client = client
        node = client.node
        self.subs = [
            node.create_subscription(Detection2DArray, f"{c}/detections", self._cb(c), 50) for c in CAMERAS
        ]

    def _cb(self, cam: str):
        def on(msg: Any) -> None:
            now = self.client.node.get_clock().now().nanoseconds
            stamp = stamp_ns(msg.header)
            with self.lock:
                self.rx[cam].append((time.monotonic(), stamp, (now - stamp) / 1e6))

        return on

    def window(self, t0: float, t1: float) -> dict[str, list[tuple[float, int, float]]]:
        with self.lock:
            return {c: [r for r in v if t0 <= r[0] < t1] for c, v in self.rx.items()}

    def close(self) -> None:
        for s in self.subs:
            self.client.node.destroy_subscription(s)


def _run(multi: Any, seconds: float) -> None:
    node, client = multi
    out = PerCamera(client)
    streams = [FrameStreamer(client, f"{c}/image", 30.0, W, H, frame_id=c) for c in CAMERAS]
    try:
        for s in streams:
            s.__enter__()
        wait_for(lambda: all(out.rx[c] for c in CAMERAS), 30, "answers on both cameras")
        time.sleep(1.0)  # settle
        ta = time.monotonic()
        d0 = client.diagnostics()
        t0 = time.monotonic()
        rss: list[int] = []
        while time.monotonic() - t0 < seconds:
            time.sleep(min(5.0, seconds / 4))
            rss.append(int(client.grounding_status()["process_rss_bytes"]))
        t1 = time.monotonic()
        d1 = client.diagnostics()
        tb = time.monotonic()
    finally:
        for s in streams:
            s.__exit__(None, None, None)
    rx = out.window(t0, t1)
    out.close()

    counts = {c: len(v) for c, v in rx.items()}
    rates = {c: n / (t1 - t0) for c, n in counts.items()}
    lo, hi = min(counts.values()), max(counts.values())
    print(f"\n[multicamera {seconds:.0f} s] answers {counts}, rates {rates}")
    # Round robin with one call at a time: the counts differ by about one answer whatever the pace (a ratio
    # bound is fragile at the 7-8 answers a starved CI machine manages in the window); 2:1 starvation fails.
    assert hi - lo <= max(2, 0.2 * hi), f"unfair: {counts}"
    # Liveness, not speed (speed is for benchmarks): both cameras keep being answered through the window.
    # A rate bound here failed under host contention (6 answers in 18 s on a starved 2-core machine).
    assert lo >= 3, f"too few answers: {counts}"

    # Bounded latency is relative to the model's own pace, not a wall-clock figure (an absolute 3 s bound
    # failed in CI on a starved machine at ~1 s per model call: p95 3.1 s, with no backlog). Latest frame wins
    # and one call at a time: a frame waits for the running call and the other camera's, then its own, so
    # about (cameras + 1) calls; a queue of even a few frames per camera would exceed 1.5 times that.
    # (ta, tb) encloses the two diagnostics snapshots, so the time per call is if anything overestimated.
    # The median is bounded, not the p95: one host stall of a second in the window (CI: p50 70 ms, p95
    # 1.19 s at 140 ms per call, no backlog) sets the tail; a queue moves the median. That unanswered frames
    # are dropped, not queued, is the dropped-count check below; a growing queue, the quarter check.
    grounding = "/glip_node: grounding"
    calls = int(d1[grounding]["model_calls"]) - int(d0[grounding]["model_calls"])
    call_ms = 1000.0 * (tb - ta) / max(1, calls)
    latency_bound_ms = 1.5 * (len(CAMERAS) + 1) * call_ms + 500.0
    print(f"[multicamera] {calls} model calls, {call_ms:.0f} ms each, p50 bound {latency_bound_ms:.0f} ms")

    for c in CAMERAS:
        s0, s1 = d0[f"/glip_node: camera {c}"], d1[f"/glip_node: camera {c}"]
        received = int(s1["frames_received"]) - int(s0["frames_received"])
        processed = int(s1["frames_processed"]) - int(s0["frames_processed"])
        dropped = int(s1["frames_dropped"]) - int(s0["frames_dropped"])
        print(
            f"[multicamera] {c}: received {received}, processed {processed}, dropped {dropped}, "
            f"p50 {s1['latency_p50_ms']} ms, p95 {s1['latency_p95_ms']} ms, rate {s1['rate_hz']} Hz"
        )
        assert processed < received, "the model should be slower than 30 Hz here"
        assert dropped >= received - processed - 2, "frames never answered must be counted as dropped"
        assert float(s1["latency_p50_ms"]) < latency_bound_ms, (s1["latency_p50_ms"], latency_bound_ms)

        # latency does not grow: compare the first and last quarter of the window (test-side latency)
        lat = [r[2] for r in rx[c]]
        q = max(1, len(lat) // 4)
        first, last = float(np.median(lat[:q])), float(np.median(lat[-q:]))
        print(f"[multicamera] {c}: latency median first quarter {first:.0f} ms, last quarter {last:.0f} ms")
        # A backlog (no latest-frame-wins) grows by seconds over the window; transport jitter on a loaded
        # 2-core machine moved the last quarter's median by ~260 ms once, so the slack is 500 ms.
        assert last < 2.0 * first + 500, (first, last)

    growth = (rss[-1] - rss[0]) / 2**20
    print(f"[multicamera] node RSS {rss[0] / 2**20:.0f} -> {rss[-1] / 2**20:.0f} MiB")
    assert growth < 40, f"node memory grew {growth:.0f} MiB"
    assert node.alive()


def test_two_cameras_fair_bounded_latency_dropped_counted(multi) -> None:
    _, client = multi
    values = client.get_parameters("/glip_node", ["cameras", "warn_throttle", "output_depth", "max_batch"])
    # from the command line (overrides) and from config/glip.yaml (the rest)
    assert values == {"cameras": list(CAMERAS), "warn_throttle": 5.0, "output_depth": 10, "max_batch": 1}
    _run(multi, 16.0)


def test_frames_of_both_cameras_are_batched_into_one_model_call(multi) -> None:
    node, client = multi
    (res,) = client.set_parameters("/glip_node", {"max_batch": 2})
    assert res.successful
    streams = [FrameStreamer(client, f"{c}/image", 30.0, W, H, frame_id=c) for c in CAMERAS]
    try:
        for s in streams:
            s.__enter__()
        time.sleep(2.0)
        g0 = client.grounding_status()
        time.sleep(5.0)
        g1 = client.grounding_status()
    finally:
        for s in streams:
            s.__exit__(None, None, None)
        client.set_parameters("/glip_node", {"max_batch": 1})
    calls = int(g1["model_calls"]) - int(g0["model_calls"])
    frames = int(g1["engine.frames"]) - int(g0["engine.frames"])
    print(f"\n[batching] {frames} frames in {calls} model calls")
    assert calls > 0 and frames / calls > 1.6, (frames, calls)


@pytest.mark.slow
def test_two_minute_soak_latency_and_memory_flat(multi) -> None:
    _run(multi, 120.0)
