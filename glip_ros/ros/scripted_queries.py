"""``glip_scripted_queries``: sends a sequence of queries to glip_node and reports what comes back.

The third process of the demo graph (with ``glip_node`` and ``synthetic_camera``). For each query it calls
``<node>/set_query``, waits for the acknowledgement (text features cached), then for ``period`` seconds
collects the ``detections`` of frames stamped after the acknowledgement, prints a per-query summary
(frames answered, detections per phrase, mean score, one example box), and writes annotated frames from
``debug_image`` to ``out/<n>_<query>/``. It exits 0 when every query was acknowledged and answered.

Parameters: ``queries`` (string array; '' means idle), ``period`` (s per query), ``out`` (folder, '' = do
not write), ``node`` (name of the glip node), ``wait_timeout`` (s to wait for the node to come up),
``max_images`` (per query). While it waits for the node, a node that failed to configure (its ``/diagnostics``
status says so) ends the wait at once with the node's reason.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np

__all__ = ["main"]


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return s[:40] or "idle"


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def main(args: list[str] | None = None) -> int:
    """Run the query script; returns the process exit code."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    from glip_ros.srv import SetQuery

    rclpy.init(args=args)
    node = Node("glip_scripted_queries")
    queries = list(
        node.declare_parameter("queries", ["red circle. blue square", "green triangle", "-"]).value
    )
    queries = ["" if q == "-" else q for q in queries]  # '-' = idle (an empty string is awkward on CLIs)
    period = float(node.declare_parameter("period", 8.0).value)
    out = str(node.declare_parameter("out", "out/demo").value)
    target = str(node.declare_parameter("node", "glip_node").value)
    wait_timeout = float(node.declare_parameter("wait_timeout", 180.0).value)
    max_images = int(node.declare_parameter("max_images", 5).value)

    lock = threading.Lock()
    state: dict[str, Any] = {"after_ns": None, "dets": [], "images": [], "seen": 0, "node_error": ""}

    def on_dets(msg: Detection2DArray) -> None:
        with lock:
            state["seen"] += 1
            if state["after_ns"] is not None and _stamp_ns(msg.header) > state["after_ns"]:
                state["dets"].append(msg)

    def on_image(msg: Image) -> None:
        with lock:
            if state["after_ns"] is not None and _stamp_ns(msg.header) > state["after_ns"]:
                if len(state["images"]) < max_images:
                    state["images"].append(msg)

    out_qos = QoSProfile(
        depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE
    )
    node.create_subscription(Detection2DArray, "detections", on_dets, out_qos)
    if out:
        node.create_subscription(Image, "debug_image", on_image, out_qos)
    status_name = f"/{target.lstrip('/')}: grounding"  # the node's main diagnostics status

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for st in msg.status:
            failed = st.level == DiagnosticStatus.ERROR and "not configured" in st.message
            if st.name == status_name and failed:
                state["node_error"] = st.message

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    client = node.create_client(SetQuery, f"{target}/set_query")
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()

    rc = 0
    try:
        print(f"[demo] waiting up to {wait_timeout:.0f} s for {client.srv_name} ...", flush=True)
        deadline = time.monotonic() + wait_timeout
        while not client.wait_for_service(timeout_sec=0.5):
            if state["node_error"]:  # it is up but cannot serve: say why instead of waiting it out
                print(f"[demo] ERROR: {target} {state['node_error']}", flush=True)
                return 2
            if time.monotonic() > deadline:
                print(f"[demo] ERROR: {client.srv_name} did not appear; is glip_node running?", flush=True)
                return 2
        # The node answers every frame, even when idle: wait until answers flow (camera -> node -> here),
        # so that each query's period measures the node and not DDS discovery.
        deadline = time.monotonic() + 60.0
        while state["seen"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if state["seen"] == 0:
            print("[demo] ERROR: no detections arrive (is a camera publishing on `image`?)", flush=True)
            return 2
        for n, query in enumerate(queries, 1):
            req = SetQuery.Request(query=query)
            t0 = time.monotonic()
            future = client.call_async(req)
            deadline = time.monotonic() + 60.0
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            resp = future.result() if future.done() else None
            if resp is None or not resp.success:
                why = resp.message if resp is not None else "no answer within 60 s"
                print(f"[demo] query {n} {query!r}: REJECTED: {why}", flush=True)
                rc = 1
                continue
            ack_ns = node.get_clock().now().nanoseconds
            with lock:
                state.update(after_ns=ack_ns, dets=[], images=[])
            print(
                f"[demo] query {n} {query!r} -> id {resp.query_id}, phrases {list(resp.phrases)} "
                f"(acknowledged in {time.monotonic() - t0:.2f} s)",
                flush=True,
            )
            time.sleep(period)
            with lock:
                dets, images = list(state["dets"]), list(state["images"])
                state["after_ns"] = None
            _report(n, query, dets)
            if not dets:
                rc = 1
            if out and images:
                folder = os.path.join(out, f"{n:02d}_{_slug(query)}")
                os.makedirs(folder, exist_ok=True)
                for img in images:
                    _save(img, os.path.join(folder, f"{_stamp_ns(img.header)}.png"))
                print(f"[demo]   {len(images)} annotated frame(s) in {folder}/", flush=True)
    finally:
        # Stop spinning and wait for the spin thread before destroying anything it may still touch.
        executor.shutdown(timeout_sec=5.0)
        spin.join(timeout=5.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return rc


def _report(n: int, query: str, arrays: list[Any]) -> None:
    per_phrase: Counter[str] = Counter()
    scores: dict[str, list[float]] = defaultdict(list)
    example: dict[str, str] = {}
    for arr in arrays:
        for det in arr.detections:
            for hyp in det.results:
                cid = hyp.hypothesis.class_id
                per_phrase[cid] += 1
                scores[cid].append(hyp.hypothesis.score)
                b = det.bbox
                c = b.center.position
                example.setdefault(cid, f"center=({c.x:.0f},{c.y:.0f}) size={b.size_x:.0f}x{b.size_y:.0f}")
    print(f"[demo] query {n} {query!r}: {len(arrays)} frame(s) answered", flush=True)
    if not per_phrase:
        print("[demo]   no detections (empty arrays)" if arrays else "[demo]   NO ANSWER", flush=True)
    for cid, count in per_phrase.most_common():
        print(
            f"[demo]   {cid!r}: {count} detection(s), {count / max(1, len(arrays)):.2f}/frame, "
            f"mean score {float(np.mean(scores[cid])):.2f}, e.g. {example[cid]}",
            flush=True,
        )


def _save(msg: Any, path: str) -> None:
    from PIL import Image as PILImage

    from glip_ros.ros.convert import imgmsg_to_rgb

    PILImage.fromarray(np.ascontiguousarray(imgmsg_to_rgb(msg))).save(path)


if __name__ == "__main__":
    sys.exit(main())
