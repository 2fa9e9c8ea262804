"""Fixtures for the ROS tests: a tiny real checkpoint, glip_node as a separate process, a client node.

Nothing here replaces ROS or the model: the node runs the real engine on a real (tiny, random-weight)
GLIP checkpoint in its own process, and talks to the test process over DDS. Each node gets a unique
ROS_DOMAIN_ID so parallel test runs (and other people's nodes) never cross-talk.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_domains = itertools.count()


def unique_domain_id() -> int:
    """A ROS domain id for one node under test.

    scripts/test.sh claims a free ROS_DOMAIN_ID for the whole run (a lock per id), so the modules' nodes use
    it in turn (each module's node is stopped before the next starts). Without it (plain pytest), an id in
    102..201 derived from the pid, away from the ids test.sh hands out.
    """
    env = os.environ.get("ROS_DOMAIN_ID", "").strip()
    if env.isdigit():
        return int(env)
    return 102 + (os.getpid() * 13 + next(_domains) * 37) % 100


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(path, preset) of a random-weight ``glip_tiny_test`` model (real architecture, a few MB).

    The preset is empty: the safetensors file carries its config, as the project's own checkpoints do.

    The alignment bias is raised so that random weights still produce confident boxes for every phrase:
    the tests need detections to check headers, boxes and class ids, not meaningful ones.
    """
    import torch

    from glip_ros.model import build_model, save_checkpoint

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("glip_tiny_test")
    with torch.no_grad():
        model.rpn.head.bias0.fill_(4.0)
    path = str(tmp_path_factory.mktemp("ckpt") / "glip_tiny_test.safetensors")
    save_checkpoint(model, path)  # carries its config: the node needs no preset
    return path, ""


class NodeProcess:
    """``python -m glip_ros.ros.node`` in its own process; logs go to a file shown when a test fails."""

    def __init__(
        self,
        params: dict[str, Any],
        domain_id: int,
        module: str = "glip_ros.ros.node",
        extra_args: list[str] | None = None,
    ) -> None:
        self.domain_id = domain_id
        self.log_path = tempfile.mktemp(prefix="glip_node_", suffix=".log")
        args = [sys.executable, "-m", module, "--ros-args", *(extra_args or [])]
        for key, value in params.items():
            args += ["-p", f"{key}:={_cli_value(value)}"]
        env = dict(os.environ)
        env.update(
            ROS_DOMAIN_ID=str(domain_id),
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
            RCUTILS_LOGGING_BUFFERED_STREAM="0",
        )
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def _cli_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(f"'{v}'" for v in value) + "]"
    if isinstance(value, str) and value == "":
        return "''"
    return str(value)


class RosClient:
    """The test side: an rclpy node in its own context and domain, spun in a background thread."""

    def __init__(self, domain_id: int) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(f"glip_test_{os.getpid()}", context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=3, context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self._diag: dict[str, dict[str, str]] = {}
        self._diag_lock = threading.Lock()
        self._diag_count = 0
        from diagnostic_msgs.msg import DiagnosticArray

        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_diag(self, msg: Any) -> None:
        with self._diag_lock:
            for st in msg.status:
                d = {kv.key: kv.value for kv in st.values}
                d["_level"] = str(
                    int.from_bytes(st.level, "little") if isinstance(st.level, bytes) else st.level
                )
                d["_message"] = st.message
                self._diag[st.name] = d
            self._diag_count += 1

    def diagnostics(self, fresh: bool = True, timeout: float = 10.0) -> dict[str, dict[str, str]]:
        """Latest status per name; with ``fresh``, waits for a message that arrived after this call."""
        if fresh:
            start = self._diag_count
            wait_for(lambda: self._diag_count > start + 1, timeout, "a fresh /diagnostics message")
        with self._diag_lock:
            return {k: dict(v) for k, v in self._diag.items()}

    def grounding_status(self, fresh: bool = True) -> dict[str, str]:
        return self.diagnostics(fresh)["/glip_node: grounding"]

    def call(self, client: Any, request: Any, timeout: float = 30.0) -> Any:
        assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
        future = client.call_async(request)
        wait_for(future.done, timeout, f"an answer from {client.srv_name}")
        return future.result()

    def get_parameters(self, node_name: str, names: list[str]) -> dict[str, Any]:
        """Current values through the node's GetParameters service (as `ros2 param get` does)."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        client = self.node.create_client(GetParameters, f"{node_name}/get_parameters")
        try:
            values = self.call(client, GetParameters.Request(names=names)).values
            return {n: parameter_value_to_python(v) for n, v in zip(names, values, strict=True)}
        finally:
            self.node.destroy_client(client)

    def set_parameters(self, node_name: str, params: dict[str, Any]) -> list[Any]:
        """Set parameters through the node's SetParameters service (as `ros2 param set` does)."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        client = self.node.create_client(SetParameters, f"{node_name}/set_parameters")
        try:
            req = SetParameters.Request(
                parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in params.items()]
            )
            return list(self.call(client, req).results)
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, period: float = 0.02) -> None:
    """Poll ``predicate`` until true; fail the test naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def rgb_image_msg(rgb: Any, stamp: Any, frame_id: str = "camera", encoding: str = "rgb8") -> Any:
    from sensor_msgs.msg import Image

    msg = Image(height=int(rgb.shape[0]), width=int(rgb.shape[1]), encoding=encoding, is_bigendian=0)
    msg.step = int(rgb.shape[1] * rgb.shape[2])
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.data = rgb.tobytes()
    return msg


def sensor_qos(reliable: bool = False) -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
    )


def latched_qos() -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


def start_node(
    request: pytest.FixtureRequest,
    params: dict[str, Any],
    ready: str | None = "query_state",
    timeout: float = 90.0,
    extra_args: list[str] | None = None,
) -> Iterator[tuple[NodeProcess, RosClient]]:
    """Start glip_node + a client in a fresh domain; wait until ``ready`` is seen; stop both at teardown.

    The node's log is printed when a test using it failed, and always when the node died.
    """
    domain = unique_domain_id()
    node = NodeProcess(params, domain, extra_args=extra_args)
    client = RosClient(domain)
    try:
        if ready == "query_state":
            from glip_ros.msg import QueryState

            got: list[Any] = []
            sub = client.node.create_subscription(QueryState, "query_state", got.append, latched_qos())
            wait_for(lambda: bool(got) or not node.alive(), timeout, "glip_node to publish query_state")
            client.node.destroy_subscription(sub)
            assert node.alive(), "glip_node exited during start-up"
        yield node, client
    finally:
        failed = getattr(request.node, "_glip_failed", False)
        client.close()
        rc = node.stop()
        if failed or rc not in (0, -signal.SIGINT, 130):
            print(f"\n----- glip_node log (exit code {rc}) -----\n{node.output()}\n-----", file=sys.stderr)
        os.unlink(node.log_path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    """Mark module-scoped node fixtures' owners as failed, so the node log gets printed at teardown."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        item._glip_failed = True  # type: ignore[attr-defined]
        parent = item.parent
        while parent is not None:
            parent._glip_failed = True  # type: ignore[attr-defined]
            parent = parent.parent


class FrameStreamer:
    """Publishes rgb8 frames on ``topic`` at ``rate`` Hz from a thread, stamped with the test node's clock."""

    def __init__(
        self,
        client: RosClient,
        topic: str,
        rate: float,
        width: int = 640,
        height: int = 480,
        frame_id: str = "cam",
    ) -> None:
        import numpy as np
        from sensor_msgs.msg import Image

        self.client = client
        self.pub = client.node.create_publisher(Image, topic, sensor_qos(reliable=True))
        self.period = 1.0 / rate
        self.frame_id = frame_id
        rng = np.random.default_rng(abs(hash(topic)) % 2**32)
        self.rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        self.stamps: list[int] = []  # ns, in publish order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FrameStreamer:
        wait_for(lambda: self.pub.get_subscription_count() > 0, 30, f"a subscriber on {self.pub.topic_name}")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.client.node.destroy_publisher(self.pub)

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            now = self.client.node.get_clock().now()
            msg = rgb_image_msg(self.rgb, now.to_msg(), self.frame_id)
            self.stamps.append(now.nanoseconds)
            self.pub.publish(msg)
            next_t += self.period
            self._stop.wait(max(0.0, next_t - time.monotonic()))


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
