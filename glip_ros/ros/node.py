"""``glip_node``: GLIP text-grounded detection as a ROS 2 lifecycle node.

Design (see docs/INTERFACES.md for the user-facing contract):

* Image callbacks only store the latest message per camera (overwriting an unprocessed one counts a dropped
  frame), so a slow model never builds a queue of stale frames.
* One worker thread takes the pending frames of up to ``max_batch`` cameras, least recently served first
  (fair), converts them, and runs one batched ``engine.detect`` call. All cameras share one model and one
  text cache.
* Queries (topic, ``~/set_query`` service, ``query`` parameter) are encoded once and cached by the engine. The
  switch of the active query and the publishing of results happen under one lock, and the worker checks the
  query id before publishing: a batch computed for an old query is re-run on the new one, so no detection of
  an old query is ever published after a change was acknowledged.
* Bad input (frames, queries, parameters) never raises out of a callback: it is counted by kind in
  /diagnostics and logged once per ``warn_throttle`` seconds per kind.
* Latency is measured on the node clock (``use_sim_time`` works); diagnostics are paced by a steady timer so
  they keep coming when a simulation is paused.
"""

from __future__ import annotations

import gc
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from glip_ros.cpu_memory import keep_freed_memory
from glip_ros.ros.convert import (
    ImageConversionError,
    check_imgmsg,
    compressed_to_rgb,
    detections_to_msg,
    grounding_result_msg,
    imgmsg_to_rgb,
    rgb_to_imgmsg,
)
from glip_ros.ros.params import PARAMETERS, PARAMS_BY_NAME, ParamSpec

__all__ = ["BAD_INPUT_KINDS", "PARAMETERS", "GlipNode", "main"]

NODE_NAME = "glip_node"

# Every kind of bad input the node counts; all are always reported in /diagnostics (zero included), so
# monitoring can alert on any of them increasing.
BAD_INPUT_KINDS: tuple[str, ...] = (
    "unknown_encoding",
    "zero_size",
    "bad_step",
    "short_data",
    "odd_width",
    "corrupt_compressed",
    "unusable_size",
    "conversion_error",
    "invalid_utf8",
    "query_too_long",
    "query_rejected",
    "param_rejected",
    "model_load",
    "ground_rejected",
    "inference_error",
)

LATENCY_WINDOW = 300  # samples kept per camera for p50/p95


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


@dataclass
class ActiveQuery:
    """The query results are currently computed for. ``prepared`` is None when idle (empty query)."""

    query_id: int
    text: str
    prepared: Any = None
    ack_ns: int = 0  # node-clock time the switch was acknowledged

    @property
    def phrases(self) -> list[str]:
        return list(self.prepared.phrases) if self.prepared is not None else []


@dataclass
class CameraStats:
    received: int = 0
    processed: int = 0  # frames that got a published answer (empty arrays included)
    dropped: int = 0  # overwritten before the worker took them, or superseded during a query switch
    bad: int = 0
    idle_answers: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    last_processed: int = 0  # for the rate between two diagnostics ticks


@dataclass
class Camera:
    """One input stream with its outputs. ``name == ''`` means node-relative topics without a prefix."""

    name: str
    stats: CameraStats = field(default_factory=CameraStats)
    pending: Any = None  # latest unprocessed message
    latest: Any = None  # latest message (for the one-shot ground service)
    last_served: float = 0.0  # monotonic time the worker last took a frame of this camera
    input_topic: str = ""
    sub: Any = None
    pub_det: Any = None
    pub_grounding: Any = None
    pub_debug: Any = None

    @property
    def label(self) -> str:
        return self.name or "default"

    def topic(self, base: str) -> str:
        return f"{self.name}/{base}" if self.name else base


_TOPIC_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _valid_camera_name(name: str) -> bool:
    """'' or '/'-separated ROS topic-name tokens (ASCII letters, digits, '_'; str.isalpha would take 'ü',
    which passed here and then failed activate's create_subscription)."""
    return name == "" or all(_TOPIC_TOKEN.fullmatch(p) for p in name.split("/"))


class GlipNode(LifecycleNode):
    """GLIP grounding node: images + text query in, Detection2DArray (+ debug image, diagnostics) out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._param_types: dict[str, Any] = {}
        startup_rejects: list[str] = []
        for spec in PARAMETERS:
            try:
                self.declare_parameter(spec.name, spec.default, spec.descriptor())
            except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
                # A wrong type or an out-of-range value given at start: rclpy raises (the node would die).
                startup_rejects.append(f"{exc}; using the default {spec.default!r}")
                self.declare_parameter(spec.name, spec.default, spec.descriptor(), ignore_override=True)
            self._param_types[spec.name] = Parameter.Type.from_parameter_value(spec.default)
        self._param_types["cameras"] = Parameter.Type.STRING_ARRAY
        self._malloc_note = "glibc default (keep_freed_memory: false)"
        if self.param("keep_freed_memory"):
            applied, self._malloc_note = keep_freed_memory()
            (self.get_logger().info if applied else self.get_logger().warning)(f"malloc: {self._malloc_note}")

        self._engine: Any = None
        self._engine_lock = threading.Lock()  # one model call / query encode at a time
        self._query_lock = threading.Lock()  # query switch vs result publishing
        self._frames_cv = threading.Condition()  # pending frames between callbacks and the worker
        self._active = False
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._cameras: list[Camera] = []
        self._query = ActiveQuery(query_id=0, text="")
        self._next_query_id = 1
        self._sync = threading.local()
        self._mirror_lock = threading.Lock()
        self._bad: dict[str, int] = dict.fromkeys(BAD_INPUT_KINDS, 0)
        self._bad_lock = threading.Lock()
        self._bad_last_tick = 0
        self._warn_last: dict[str, float] = {}
        self._warn_suppressed: dict[str, int] = {}
        self._model_calls = 0
        self._state_label = "unconfigured"
        self._last_error = ""
        self._device = ""
        self._diag_last = time.monotonic()

        self._services_group = ReentrantCallbackGroup()
        self._frames_group = ReentrantCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self._pub_query_state: Any = None
        self._entities: list[tuple[str, Any]] = []
        # Service calls in progress, and services deactivate took down while one was (see _retire_service).
        self._calls_lock = threading.Lock()
        self._calls_in_flight = 0
        self._calls_last_end = 0.0
        self._retired: list[Any] = []
        self._reap_timer: Any = None

        if hasattr(self, "add_pre_set_parameters_callback"):  # Iron and later
            self.add_pre_set_parameters_callback(self._pre_set_parameters)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        for reason in startup_rejects:
            self._bad_input("param_rejected", f"start-up value refused: {reason}", throttle_key=reason)
        # Start-up values skip the on-set callback: give the live and activate ones the same checks as a
        # runtime set, so that e.g. transport:=rawx or duplicate camera names are not used silently. (Model
        # parameters and the query are checked at configure, which fails or starts idle with the reason.)
        for spec in PARAMETERS:
            if spec.applies not in ("live", "activate") or spec.name == "query":
                continue
            result = self._on_set_parameters([self.get_parameter(spec.name)])
            if not result.successful:  # counted and warned by _refuse
                self.get_logger().error(
                    f"start-up value of '{spec.name}' refused ({result.reason}); using {spec.default!r}"
                )
                self.set_parameters([Parameter(spec.name, value=spec.default)])

        # Health is reported in every lifecycle state (a node that failed to configure says why).
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer: Any = None
        self._start_diagnostics_timer()

    def _start_diagnostics_timer(self) -> None:
        """(Re)create the diagnostics timer: steady clock, so reports continue while a sim is paused."""
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
        self._diag_timer = self.create_timer(
            float(self.param("diagnostics_period")),
            self._publish_diagnostics,
            callback_group=self._diag_group,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )

    # ------------------------------------------------------------------ parameters

    def param(self, name: str) -> Any:
        """Current value of a declared parameter."""
        return self.get_parameter(name).value

    def _pre_set_parameters(self, parameters: list[Parameter]) -> list[Parameter]:
        """Count parameter sets that rclpy's descriptor check will refuse (wrong type, out of range)."""
        for p in parameters:
            spec = PARAMS_BY_NAME.get(p.name)
            if spec is None or p.type_ == Parameter.Type.NOT_SET:
                continue
            if spec.read_only:
                self._bad_input(
                    "param_rejected",
                    f"parameter '{p.name}' is read-only (read once at start)",
                    throttle_key=p.name,
                )
                continue
            expected = self._param_types[p.name]
            if p.type_ != expected:
                self._bad_input(
                    "param_rejected",
                    f"parameter '{p.name}' refused: expected {expected.name.lower()}, "
                    f"got {p.type_.name.lower()}",
                    throttle_key=p.name,
                )
            elif spec.int_range and not spec.int_range[0] <= p.value <= spec.int_range[1]:
                self._bad_input(
                    "param_rejected",
                    f"parameter '{p.name}'={p.value} outside {spec.int_range}",
                    throttle_key=p.name,
                )
            elif spec.float_range and not spec.float_range[0] <= p.value <= spec.float_range[1]:
                self._bad_input(
                    "param_rejected",
                    f"parameter '{p.name}'={p.value} outside {spec.float_range}",
                    throttle_key=p.name,
                )
        return parameters

    def _refuse(self, reason: str) -> SetParametersResult:
        self._bad_input("param_rejected", reason, throttle_key=reason)
        return SetParametersResult(successful=False, reason=reason)

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Validate parameter changes; apply the live ones (``query`` answers success or the reason)."""
        query_param: Parameter | None = None
        for p in parameters:
            spec: ParamSpec | None = PARAMS_BY_NAME.get(p.name)
            if spec is None:
                continue
            if spec.applies in ("configure", "activate") and self._active:
                how = (
                    "deactivate, cleanup, set it, configure, activate (lifecycle reconfigure)"
                    if spec.applies == "configure"
                    else "deactivate, set it, activate"
                )
                return self._refuse(
                    f"'{p.name}' {'selects code or files and ' if spec.applies == 'configure' else ''}"
                    f"cannot change while the node is active: {how}"
                )
            if spec.choices and p.value not in spec.choices:
                return self._refuse(f"'{p.name}' must be one of {list(spec.choices)}, got {p.value!r}")
            if p.name == "checkpoint" and p.value and not os.path.isfile(os.path.expanduser(p.value)):
                return self._refuse(f"checkpoint file not found: {p.value!r}")
            if p.name == "preset" and p.value.strip():
                from glip_ros.model.config import model_spec_error

                error = model_spec_error(p.value)
                if error:
                    return self._refuse(f"'preset': {error}")
            if p.name == "device" and not _valid_device(p.value):
                return self._refuse(f"'device' must be auto, cpu, cuda or cuda:N, got {p.value!r}")
            if p.name == "cameras":
                names = list(p.value)
                bad = [n for n in names if not _valid_camera_name(n)]
                if not names or bad or len(set(names)) != len(names):
                    return self._refuse(
                        f"'cameras' must be a non-empty list of unique topic-name tokens, got {names!r}"
                    )
            if p.name == "query":
                query_param = p
        if query_param is not None and not getattr(self._sync, "active", False):
            ok, reason, _ = self._apply_query(str(query_param.value), None, source="parameter")
            if not ok:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _sync_query_param(self, text: str) -> None:
        """Mirror the query in use into the ``query`` parameter, so `param get` is truthful (``text``: the
        stored query, used while no model is loaded).

        Serialised, and with a model loaded it writes the active query as it is at the write: a topic query
        and a service query arriving together wrote their own texts in either order, and the parameter
        could keep the one that was replaced."""
        with self._mirror_lock:
            if self._engine is not None:
                q = self._query
                text = q.text if q.prepared is not None else ""
            if self.param("query") == text:
                return
            self._sync.active = True
            try:
                self.set_parameters([Parameter("query", Parameter.Type.STRING, text)])
            finally:
                self._sync.active = False

    # ------------------------------------------------------------------ bad input and logging

    def _bad_input(
        self, kind: str, message: str, camera: Camera | None = None, throttle_key: str = ""
    ) -> None:
        """Count a bad input and log it, at most once per ``warn_throttle`` seconds per kind and camera (and
        ``throttle_key``: refused parameters are throttled per parameter, so that each one is named)."""
        with self._bad_lock:
            self._bad[kind] = self._bad.get(kind, 0) + 1
            if camera is not None:
                camera.stats.bad += 1
        now = time.monotonic()
        throttle = float(self.param("warn_throttle"))
        key = f"{kind}@{camera.label if camera is not None else ''}#{throttle_key}"
        last = self._warn_last.get(key)
        if last is not None and now - last < throttle:
            self._warn_suppressed[key] = self._warn_suppressed.get(key, 0) + 1
            return
        self._warn_last[key] = now
        suppressed = self._warn_suppressed.pop(key, 0)
        more = f" ({suppressed} more of this kind since the last warning)" if suppressed else ""
        where = f"[{camera.label}] " if camera is not None else ""
        self.get_logger().warning(f"{where}{kind}: {message}{more}")

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read the model parameters, load the model, warm it up, prepare the stored query."""
        checkpoint = str(self.param("checkpoint")).strip()
        preset = str(self.param("preset")).strip()
        device = _resolve_device(str(self.param("device")))
        precision = str(self.param("precision"))
        threads = int(self.param("num_threads"))
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        if checkpoint and not os.path.isfile(os.path.expanduser(checkpoint)):
            return self._configure_failed(f"checkpoint file not found: {checkpoint!r}", checkpoint_hint=True)
        t0 = time.monotonic()
        try:
            from glip_ros.engine import GroundingEngine

            engine = GroundingEngine.from_checkpoint(
                os.path.expanduser(checkpoint) or None,
                # the node's `max_query_chars` (up to 100000) is the limit; the engine's own default is 50000
                max_query_chars=PARAMS_BY_NAME["max_query_chars"].int_range[1],
                preset=preset or None,
                device=device,
                precision=precision,
                head_precision=str(self.param("head_precision")),
                cuda_graphs=bool(self.param("cuda_graphs")),
                compile=str(self.param("compile")),
                text_cache_size=int(self.param("text_cache_size")),
                min_size=_size(int(self.param("min_size")), zero_means_none=True),
                max_size=_size(int(self.param("max_size")), zero_means_none=False),
            )
            if self.param("warmup"):
                engine.warmup()
        except Exception as exc:  # noqa: BLE001 - any load failure leaves the node alive and unconfigured
            from glip_ros.model import CheckpointError

            return self._configure_failed(
                f"{type(exc).__name__}: {exc}", checkpoint_hint=isinstance(exc, CheckpointError)
            )
        self._engine = engine
        self._device = device
        self._last_error = ""
        self.get_logger().info(
            f"model ready in {time.monotonic() - t0:.1f} s: checkpoint={checkpoint or '<embedded default>'} "
            f"preset={preset or '<from checkpoint>'} device={device} precision={precision} "
            f"head_precision={engine.head_precision} cuda_graphs={engine.graphs is not None} "
            f"compile={engine.compiled.scope} "
            f"input size min={getattr(engine, 'min_size', '?')} max={getattr(engine, 'max_size', '?')}"
        )
        self._pub_query_state = self._make_query_state_publisher()
        text = str(self.param("query"))
        ok, reason, _ = self._apply_query(text, None, source="parameter")
        if not ok:
            self.get_logger().error(f"stored query {text[:80]!r} rejected ({reason}); starting idle")
            self._sync_query_param("")  # `param get query` tells the query in use
        self._state_label = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def _activate_failed(self, reason: str) -> TransitionCallbackReturn:
        """Log it and keep it for /diagnostics (level ERROR) until the next successful activate."""
        self._last_error = f"activate failed: {reason}"
        self.get_logger().error(self._last_error)
        return TransitionCallbackReturn.FAILURE

    def _configure_failed(self, reason: str, checkpoint_hint: bool = False) -> TransitionCallbackReturn:
        self._bad["model_load"] += 1
        self._last_error = reason
        fix = (
            "Set 'checkpoint' to a valid file (or empty for the embedded default model)"
            if checkpoint_hint
            else "Correct the model parameter named above"
        )
        self.get_logger().error(
            f"configure failed, node stays unconfigured: {reason}. {fix} and trigger configure again."
        )
        return TransitionCallbackReturn.FAILURE

    def _make_query_state_publisher(self) -> Any:
        from glip_ros.msg import QueryState

        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        return self.create_publisher(QueryState, "query_state", qos)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Create subscriptions, publishers, services and start the worker."""
        from vision_msgs.msg import Detection2DArray

        from glip_ros.msg import GroundingResult
        from glip_ros.srv import Ground, SetQuery

        self._wait_for_retired(30.0)
        if self._retired:
            return self._activate_failed(
                "a service call made before the last deactivate is still running; activate again when it "
                "has been answered"
            )
        try:
            names = [str(n) for n in self.param("cameras")]
            compressed = self.param("transport") == "compressed"
            reliable = self.param("image_reliability") == "reliable"
            image_qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=1,
                reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                durability=DurabilityPolicy.VOLATILE,
            )
            out_qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=int(self.param("output_depth")),
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.VOLATILE,
            )
            cameras = []
            for name in names:
                cam = Camera(name=name)
                base = _resolve(self, cam.topic("image"))  # remaps apply to the base name, as image_transport
                cam.input_topic = base + "/compressed" if compressed else base
                msg_type = CompressedImage if compressed else Image
                cam.sub = self.create_subscription(
                    msg_type,
                    cam.input_topic,
                    lambda msg, c=cam: self._on_image(c, msg),
                    image_qos,
                    callback_group=self._frames_group,
                )
                cam.pub_det = self.create_publisher(Detection2DArray, cam.topic("detections"), out_qos)
                cam.pub_grounding = self.create_publisher(GroundingResult, cam.topic("grounding"), out_qos)
                cam.pub_debug = self.create_publisher(Image, cam.topic("debug_image"), out_qos)
                cameras.append(cam)
            query_qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=10,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.VOLATILE,
            )
            self._entities = [
                (
                    "sub",
                    self.create_subscription(
                        String, "query", self._on_query_msg, query_qos, callback_group=self._services_group
                    ),
                ),
                (
                    "srv",
                    self.create_service(
                        SetQuery,
                        "~/set_query",
                        self._counted_call(self._on_set_query),
                        callback_group=self._services_group,
                    ),
                ),
                (
                    "srv",
                    self.create_service(
                        Ground,
                        "~/ground",
                        self._counted_call(self._on_ground),
                        callback_group=self._services_group,
                    ),
                ),
            ]
        except Exception as exc:  # noqa: BLE001
            self._destroy_cameras()
            return self._activate_failed(f"{type(exc).__name__}: {exc}")
        with self._frames_cv:
            self._cameras = cameras
        self._stop.clear()
        self._active = True
        self._worker = threading.Thread(target=self._work_loop, name="glip_worker", daemon=True)
        self._worker.start()
        self._start_diagnostics_timer()
        self._publish_query_state()
        self._state_label = "active"
        self._last_error = ""
        topics = ", ".join(c.input_topic for c in cameras)
        self.get_logger().info(f"active: {len(cameras)} camera(s) [{topics}], query {self._query.text!r}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking frames, finish the in-flight batch, destroy topics and services."""
        self._stop_work()
        self._state_label = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Drop the model and free its memory (GPU memory included)."""
        self._stop_work()
        self._release_engine()
        self._state_label = "unconfigured"
        self._last_error = ""
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_work()
        self._release_engine()
        self._state_label = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_work()
        self._release_engine()
        self._state_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _stop_work(self) -> None:
        self._active = False
        self._stop.set()
        with self._frames_cv:
            self._frames_cv.notify_all()
        worker, self._worker = self._worker, None
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=60.0)
        self._destroy_cameras()

    def _destroy_cameras(self) -> None:
        with self._frames_cv:
            cameras, self._cameras = self._cameras, []
        for cam in cameras:
            for ent in (cam.sub, cam.pub_det, cam.pub_grounding, cam.pub_debug):
                if ent is not None:
                    self._destroy(ent)
        for kind, ent in self._entities:
            if kind == "srv":
                self._retire_service(ent)
            else:
                self._destroy(ent)
        self._entities = []

    # ------------------------------------------------------------------ services and deactivate

    def _counted_call(self, fn: Any) -> Any:
        """A service callback counted while it runs. Why: rclpy sends the answer after the callback returns,
        and an answer on a service that deactivate destroyed meanwhile raised out of the executor's spin and
        ended the process."""

        def call(request: Any, response: Any) -> Any:
            with self._calls_lock:
                self._calls_in_flight += 1
            try:
                return fn(request, response)
            finally:
                with self._calls_lock:
                    self._calls_in_flight -= 1
                    self._calls_last_end = time.monotonic()

        return call

    def _retire_service(self, srv: Any) -> None:
        """Destroy a service now, or, while a call is in progress or just answered, once it is done (a timer
        checks every 0.2 s); meanwhile the service answers as the inactive node does."""
        with self._calls_lock:
            self._retired.append(srv)
        if not self._reap_retired() and self._reap_timer is None:
            try:
                self._reap_timer = self.create_timer(0.2, self._reap_retired, callback_group=self._diag_group)
            except Exception:  # noqa: BLE001 - the context is shut down (process exit): no answer will go
                self._reap_retired(force=True)

    def _reap_retired(self, force: bool = False) -> bool:
        """Destroy the retired services if no call is in progress or was answered in the last second (the
        answer leaves after the callback); True when none is left."""
        with self._calls_lock:
            busy = self._calls_in_flight > 0 or time.monotonic() - self._calls_last_end < 1.0
            if busy and self._retired and not force:
                return False
            retired, self._retired = self._retired, []
        for srv in retired:
            self._destroy(srv)
        if self._reap_timer is not None:
            self.destroy_timer(self._reap_timer)
            self._reap_timer = None
        return True

    def _wait_for_retired(self, timeout: float) -> None:
        """Before creating the services again: two services of one name on a node must not coexist."""
        deadline = time.monotonic() + timeout
        while not self._reap_retired() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _destroy(self, entity: Any) -> None:
        for fn in (self.destroy_subscription, self.destroy_publisher, self.destroy_service):
            try:
                if fn(entity):
                    return
            except (TypeError, AttributeError, ValueError):
                continue

    def _release_engine(self) -> None:
        with self._engine_lock:
            engine, self._engine = self._engine, None
        with self._query_lock:
            self._query = ActiveQuery(query_id=self._query.query_id, text=self._query.text)
        if self._pub_query_state is not None:
            self._destroy(self._pub_query_state)
            self._pub_query_state = None
        if engine is None:
            return
        del engine
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - freeing memory is best effort
            pass

    def shutdown_work(self) -> None:
        """Stop the worker and drop the model (called from main() on exit)."""
        self._stop_work()
        self._release_engine()

    # ------------------------------------------------------------------ queries

    def _apply_query(
        self, text: str, phrases: list[str] | None, source: str, publish_state: bool = True
    ) -> tuple[bool, str, ActiveQuery]:
        """Parse and encode a query, then make it active. Returns (success, message, active query).

        Blocks until the text features are cached; the switch is atomic with respect to result publishing.
        ``publish_state=False``: the caller publishes ``query_state`` itself (after mirroring the parameter,
        so a client that reacts to the new state reads the new ``query`` parameter too).
        """
        text = text if isinstance(text, str) else str(text)
        phrases = [str(p) for p in phrases] if phrases else None
        if "\ufffd" in text or (phrases and any("\ufffd" in p for p in phrases)):
            reason = "query contains invalid UTF-8 (bytes that are not text); not applied"
            self._bad_input("invalid_utf8", f"{source}: {reason}")
            return False, reason, self._query
        idle = not text.strip() and not phrases
        limit = int(self.param("max_query_chars"))
        size = len(text) + sum(len(p) for p in phrases or [])
        if size > limit:
            reason = (
                f"query has {size} characters (phrases included), more than max_query_chars={limit}; "
                "not applied"
            )
            self._bad_input("query_too_long", f"{source}: {reason}")
            return False, reason, self._query
        if self._engine is None:
            # Not configured: the parameter keeps the text, on_configure applies it. Parsed now (no model
            # needed), so that "?!?!" is refused when set rather than replacing a good stored query.
            if not idle:
                from glip_ros.prompt import QueryError, build_prompts

                try:
                    build_prompts(text, phrases=phrases)
                except QueryError as exc:
                    reason = f"{exc}; not applied"
                    self._bad_input("query_rejected", f"{source}: {reason} (query: {_clip(text)})")
                    return False, reason, self._query
            return True, "stored; applied when the node is configured", self._query
        prepared = None
        if not idle:
            try:
                with self._engine_lock:
                    engine = self._engine
                    if engine is None:
                        return False, "model was unloaded", self._query
                    prepared = engine.prepare_query(text, phrases)
            except ValueError as exc:  # QueryError is a ValueError
                reason = str(exc) or type(exc).__name__
                self._bad_input("query_rejected", f"{source}: {reason} (query: {_clip(text)})")
                return False, reason, self._query
            except Exception as exc:  # noqa: BLE001 - an encoder failure must not kill the caller
                reason = f"{type(exc).__name__}: {exc}"
                self._bad_input("query_rejected", f"{source}: {reason} (query: {_clip(text)})")
                return False, reason, self._query
        with self._query_lock:
            cur = self._query
            same = cur.text == text and (
                (idle and cur.prepared is None)
                or (
                    cur.prepared is not None
                    and prepared is not None
                    and list(cur.phrases) == list(prepared.phrases)
                )
            )
            if not same:
                self._query = ActiveQuery(
                    query_id=self._next_query_id,
                    text=text,
                    prepared=prepared,
                    ack_ns=self.get_clock().now().nanoseconds,
                )
                self._next_query_id += 1
            active = self._query
        if not same:
            if publish_state:
                self._publish_query_state()
            n = len(active.phrases)
            what = "idle (empty query)" if idle else f"{n} phrase(s) {_clip(str(active.phrases), 300)}"
            self.get_logger().info(f"query {active.query_id} from {source}: {_clip(text)} -> {what}")
        return True, "idle" if idle else "ok", active

    def _publish_query_state(self) -> None:
        pub = self._pub_query_state
        if pub is None:
            return
        from glip_ros.msg import PhraseSpan, QueryState

        q = self._query
        msg = QueryState()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.query_id = q.query_id
        msg.query = q.text
        msg.active = q.prepared is not None
        if q.prepared is not None:
            msg.caption = str(q.prepared.caption)
            spans = list(getattr(q.prepared, "spans", []) or [])
            for i, phrase in enumerate(q.prepared.phrases):
                span = spans[i][0] if i < len(spans) and spans[i] else (0, 0)
                msg.phrases.append(PhraseSpan(phrase=str(phrase), start=int(span[0]), end=int(span[1])))
        try:
            pub.publish(msg)
        except Exception as exc:  # noqa: BLE001 - publisher destroyed concurrently
            self.get_logger().debug(f"query_state not published: {exc}")

    def _on_query_msg(self, msg: String) -> None:
        prev = self._query
        ok, _, active = self._apply_query(msg.data, None, source="topic", publish_state=False)
        if ok:
            self._sync_query_param(msg.data)
        if active is not prev:
            self._publish_query_state()

    def _on_set_query(self, request: Any, response: Any) -> Any:
        prev = self._query
        ok, message, active = self._apply_query(
            request.query, list(request.phrases), source="service", publish_state=False
        )
        response.success = ok
        response.message = message
        response.query_id = int(active.query_id)
        response.phrases = [str(p) for p in active.phrases]
        if ok:
            self._sync_query_param(request.query)
        if active is not prev:
            self._publish_query_state()
        return response

    # ------------------------------------------------------------------ frames

    def _on_image(self, cam: Camera, msg: Any) -> None:
        """Store the frame; never convert or infer here (a busy model must not build a queue).

        Raw frames get an O(1) metadata check first, so malformed ones are counted on arrival and never
        displace a good frame that is waiting for the model.
        """
        if isinstance(msg, Image):
            try:
                check_imgmsg(msg)
            except ImageConversionError as exc:
                with self._frames_cv:
                    cam.stats.received += 1
                self._bad_input(exc.kind, exc.message, cam)
                return
        with self._frames_cv:
            cam.stats.received += 1
            if cam.pending is not None:
                cam.stats.dropped += 1
            cam.pending = msg
            cam.latest = msg
            self._frames_cv.notify()

    def _convert(
        self, cam: Camera | None, msg: Any, reasons: list[str] | None = None, count: bool = True
    ) -> np.ndarray | None:
        """The frame as RGB, or None with the reason appended to ``reasons`` and (``count``) counted as bad
        input of its kind (~/ground on a camera's latest frame does not count it: the worker did)."""
        try:
            if isinstance(msg, CompressedImage):
                rgb = compressed_to_rgb(msg.data, msg.format)
            else:
                rgb = imgmsg_to_rgb(msg)
            _check_model_size(self._engine, rgb)
            return rgb
        except ImageConversionError as exc:
            kind, message = exc.kind, exc.message
        except Exception as exc:  # noqa: BLE001 - a malformed message must not stop the worker
            kind, message = "conversion_error", f"{type(exc).__name__}: {exc}"
        if reasons is not None:
            reasons.append(f"{kind}: {message}")
        if count:
            self._bad_input(kind, message, cam)
        return None

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            with self._frames_cv:
                self._frames_cv.wait_for(
                    lambda: self._stop.is_set() or any(c.pending is not None for c in self._cameras),
                    timeout=0.5,
                )
                if self._stop.is_set():
                    return
                ready = sorted(
                    (c for c in self._cameras if c.pending is not None), key=lambda c: c.last_served
                )
                batch = ready[: max(1, int(self.param("max_batch")))]
                items = []
                now = time.monotonic()
                for cam in batch:
                    items.append((cam, cam.pending))
                    cam.pending = None
                    cam.last_served = now
            if not items:
                continue
            t0 = time.monotonic()
            try:
                self._process(items)
            except Exception as exc:  # noqa: BLE001 - keep serving whatever happens
                self._bad_input("inference_error", f"{type(exc).__name__}: {exc}")
            # Re-read max_rate while resting, so that raising or clearing it takes effect at once.
            while not self._stop.is_set():
                max_rate = float(self.param("max_rate"))
                rest = 1.0 / max_rate - (time.monotonic() - t0) if max_rate > 0 else 0.0
                if rest <= 0:
                    break
                self._stop.wait(min(rest, 0.1))

    def _process(self, items: list[tuple[Camera, Any]]) -> None:
        frames: list[tuple[Camera, Any, np.ndarray]] = []
        for cam, msg in items:
            rgb = self._convert(cam, msg)
            if rgb is not None:
                frames.append((cam, msg, rgb))
        while frames and not self._stop.is_set():
            query = self._query
            if query.prepared is None:  # idle: an empty answer, unless the query changed meanwhile
                if self._publish(frames, None, query):
                    return
            else:
                engine = self._engine
                if engine is None:
                    return
                threshold = float(self.param("score_threshold"))
                with self._engine_lock:
                    if self._engine is not engine:
                        return
                    self._model_calls += 1
                    # The converted frames go in as they are (views of the message buffers where possible):
                    # preprocessing copies once, and reads a bgr8 image through its BGR buffer.
                    results = engine.detect([f[2] for f in frames], query.prepared, threshold)
                if self._publish(frames, results, query):
                    return
            # The query changed meanwhile: re-run these frames on the new query, unless a newer frame of the
            # same camera is already waiting (then this one is superseded and counted dropped). Idle frames
            # too: they went unanswered and uncounted when a query came between reading and publishing.
            with self._frames_cv:
                keep = []
                for f in frames:
                    if f[0].pending is None:
                        keep.append(f)
                    else:
                        f[0].stats.dropped += 1
                frames = keep

    def _publish(
        self, frames: list[tuple[Camera, Any, np.ndarray]], results: list[Any] | None, query: ActiveQuery
    ) -> bool:
        """Publish the results of ``query`` for ``frames``; False (nothing published) if the query changed."""
        idle = results is None
        per_frame = [[] for _ in frames] if idle else [list(r) for r in results]
        want_debug = bool(self.param("publish_debug_image"))
        prepared_msgs = []
        for (cam, msg, rgb), dets in zip(frames, per_frame, strict=True):
            arr = detections_to_msg(msg.header, dets)
            res = grounding_result_msg(msg.header, cam.name, query.query_id, dets, arr)
            debug = None
            if want_debug and cam.pub_debug is not None and cam.pub_debug.get_subscription_count() > 0:
                from glip_ros.ros.draw import draw_detections

                debug = rgb_to_imgmsg(draw_detections(rgb, dets), msg.header)
            prepared_msgs.append((cam, msg, arr, res, debug))
        with self._query_lock:
            if self._query.query_id != query.query_id:
                return False
            for cam, msg, arr, res, debug in prepared_msgs:
                try:
                    cam.pub_det.publish(arr)
                    cam.pub_grounding.publish(res)
                    if debug is not None:
                        cam.pub_debug.publish(debug)
                except Exception as exc:  # noqa: BLE001 - publisher destroyed by a concurrent deactivate
                    self.get_logger().debug(f"publish skipped: {exc}")
                    continue
                now_ns = self.get_clock().now().nanoseconds
                stamp = _stamp_ns(msg.header)
                cam.stats.processed += 1
                if idle:
                    cam.stats.idle_answers += 1
                if stamp > 0:
                    cam.stats.latencies_ms.append((now_ns - stamp) / 1e6)
        return True

    # ------------------------------------------------------------------ one-shot service

    def _on_ground(self, request: Any, response: Any) -> Any:
        """Ground a query (or the active one) on a given image or a camera's latest frame, now."""
        response.success = False
        engine = self._engine
        if engine is None:
            response.message = "node is not configured"
            return response
        if request.use_image:
            msg = request.image
            cam = None
        else:
            cams = list(self._cameras)
            cam = (
                next((c for c in cams if c.name == request.camera), None)
                if request.camera
                else (cams[0] if cams else None)
            )
            if cam is None:
                response.message = f"unknown camera {request.camera!r}; cameras: {[c.name for c in cams]}"
                self._bad_input("ground_rejected", response.message)
                return response
            msg = cam.latest
            if msg is None:
                response.message = f"no frame received yet on {cam.input_topic}"
                return response
        reasons: list[str] = []
        rgb = self._convert(cam, msg, reasons, count=cam is None)
        if rgb is None:
            response.message = f"image could not be converted: {reasons[0]}"
            return response
        text = str(request.query)
        if "\ufffd" in text:
            response.message = "query contains invalid UTF-8"
            self._bad_input("invalid_utf8", f"ground: {response.message}")
            return response
        if len(text) > int(self.param("max_query_chars")):
            response.message = f"query has {len(text)} characters, more than max_query_chars"
            self._bad_input("query_too_long", f"ground: {response.message}")
            return response
        threshold = float(request.score_threshold)
        if not threshold > 0:  # <= 0 or NaN: the parameter
            threshold = float(self.param("score_threshold"))
        threshold = min(threshold, 1.0)  # above 1 (inf too) means 1, as documented
        try:
            with self._engine_lock:
                if self._engine is not engine:
                    response.message = "model was unloaded"
                    return response
                if text.strip():
                    prepared = engine.prepare_query(text)
                    query_id = self._one_shot_id()
                else:
                    active = self._query
                    if active.prepared is None:
                        response.message = "no active query: pass one in 'query'"
                        return response
                    prepared, query_id = active.prepared, active.query_id
                self._model_calls += 1
                dets = engine.detect([rgb], prepared, threshold)[0]
        except ValueError as exc:
            response.message = str(exc)
            self._bad_input("query_rejected", f"ground: {exc} (query: {_clip(text)})")
            return response
        except Exception as exc:  # noqa: BLE001
            response.message = f"{type(exc).__name__}: {exc}"
            self._bad_input("inference_error", f"ground: {response.message}")
            return response
        response.success = True
        response.message = "ok"
        response.query_id = int(query_id)
        response.detections = detections_to_msg(msg.header, dets)
        response.phrases = [str(p) for p in prepared.phrases]
        return response

    def _one_shot_id(self) -> int:
        with self._query_lock:
            qid = self._next_query_id
            self._next_query_id += 1
        return qid

    # ------------------------------------------------------------------ diagnostics

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        dt = max(1e-6, now - self._diag_last)
        self._diag_last = now
        name = self.get_fully_qualified_name()
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()

        main = DiagnosticStatus(name=f"{name}: grounding", hardware_id=self._device or "none")
        bad_total = sum(self._bad.values())
        q = self._query
        engine = self._engine
        if engine is None:
            main.level = DiagnosticStatus.ERROR if self._last_error else DiagnosticStatus.WARN
            main.message = f"not configured: {self._last_error}" if self._last_error else self._state_label
        elif self._last_error:
            main.level = DiagnosticStatus.ERROR
            main.message = f"{self._state_label}; {self._last_error}"
        elif bad_total > self._bad_last_tick:
            main.level = DiagnosticStatus.WARN
            main.message = f"{self._state_label}; bad input received (see bad_input.*)"
        else:
            main.level = DiagnosticStatus.OK
            main.message = f"{self._state_label}; " + (
                "idle" if q.prepared is None else f"query {q.query_id}"
            )
        self._bad_last_tick = bad_total
        values = {
            "state": self._state_label,
            "device": self._device,
            "query_id": q.query_id,
            "query": _clip(q.text, 200),
            "phrases": _clip_plain(", ".join(q.phrases), 1000),
            "model_calls": self._model_calls,
        }
        if engine is not None:
            for key, val in dict(getattr(engine, "counters", {}) or {}).items():
                values[f"engine.{key}"] = val
            try:
                values["device_memory_bytes"] = int(engine.device_memory_bytes())
            except Exception:  # noqa: BLE001
                values["device_memory_bytes"] = -1
        values["process_rss_bytes"] = _rss_bytes()
        values["malloc"] = self._malloc_note
        for kind in BAD_INPUT_KINDS:
            values[f"bad_input.{kind}"] = self._bad.get(kind, 0)
        main.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr.status.append(main)

        for cam in list(self._cameras):
            s = cam.stats
            lat = list(s.latencies_ms)
            rate = (s.processed - s.last_processed) / dt
            s.last_processed = s.processed
            st = DiagnosticStatus(name=f"{name}: camera {cam.label}", hardware_id=cam.input_topic)
            st.level = DiagnosticStatus.OK
            st.message = f"{rate:.1f} Hz"
            cv = {
                "topic": cam.input_topic,
                "rate_hz": f"{rate:.3f}",
                "latency_p50_ms": f"{_percentile(lat, 50):.1f}",
                "latency_p95_ms": f"{_percentile(lat, 95):.1f}",
                "frames_received": s.received,
                "frames_processed": s.processed,
                "frames_dropped": s.dropped,
                "frames_bad": s.bad,
                "idle_answers": s.idle_answers,
            }
            st.values = [KeyValue(key=k, value=str(v)) for k, v in cv.items()]
            arr.status.append(st)
        self._pub_diag.publish(arr)


def _size(value: int, zero_means_none: bool) -> int | None:
    """Parameter value -> engine argument: -1 = the checkpoint's own size, None = no resize."""
    if value < 0 or (value == 0 and not zero_means_none):
        return -1
    return None if value == 0 else value


def _resolve(node: Any, topic: str) -> str:
    """Expanded and remapped topic name (rclpy's resolve_topic_name; the plain name on distros without it)."""
    resolve = getattr(node, "resolve_topic_name", None)
    return resolve(topic) if resolve is not None else topic


def _check_model_size(engine: Any, rgb: np.ndarray) -> None:
    """Refuse, as a bad frame of its camera, a frame the model cannot take (it would fail the batch)."""
    error = engine.frame_size_error(int(rgb.shape[0]), int(rgb.shape[1])) if engine is not None else None
    if error:
        raise ImageConversionError("unusable_size", error)


def _clip(text: str, n: int = 80) -> str:
    return repr(text) if len(text) <= n else f"{text[:n]!r}... ({len(text)} chars)"


def _clip_plain(text: str, n: int) -> str:
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} chars)"


def _valid_device(device: str) -> bool:
    d = device.strip().lower()
    if d in ("auto", "cpu", "cuda"):
        return True
    return d.startswith("cuda:") and d[5:].isdigit()


def _resolve_device(device: str) -> str:
    d = device.strip().lower() or "auto"
    if d != "auto":
        return d
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        return "cpu"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return -1


NODE_USAGE = """usage: glip_node [--ros-args -p NAME:=VALUE ... --params-file FILE -r FROM:=TO ...]

The glip_ros grounding node (a lifecycle node): subscribes to the camera image topics named by the 'cameras'
parameter, grounds the active query's phrases in every frame and publishes vision_msgs/Detection2DArray.
Parameters, topics, services and diagnostics: docs/INTERFACES.md; defaults: config/glip.yaml.
With autostart (default true) it configures and activates itself; set autostart:=false to drive the
lifecycle yourself."""


def main(args: list[str] | None = None) -> None:
    """Console script ``glip_node``: run the node, configuring and activating it unless autostart is false."""
    argv = sys.argv[1:] if args is None else list(args)[1:]
    own = argv[: argv.index("--ros-args")] if "--ros-args" in argv else argv
    if "-h" in own or "--help" in own:
        print(NODE_USAGE)
        return
    rclpy.init(args=args)
    node = GlipNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        if node.param("autostart"):
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown_work()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
