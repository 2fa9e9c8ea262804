"""The node's parameters, declared in one table.

Why a table: the node, ``config/glip.yaml``, the launch files and docs/INTERFACES.md must agree on names,
types and defaults. One module-level :data:`PARAMETERS` tuple is the single source: the node declares from it,
and a test compares it with the YAML file and the docs without starting ROS.

``applies`` says when a change takes effect:

* ``live``: immediately, while active (e.g. ``query``, ``score_threshold``).
* ``activate``: topics/QoS are created in on_activate; refused while active.
* ``configure``: chooses code or files (checkpoint, preset, device, precision, sizes); refused while active,
  changes through a lifecycle reconfigure (deactivate, cleanup, set, configure, activate).
* ``startup``: read once when the process starts (read-only afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PARAMETERS", "PARAMS_BY_NAME", "ParamSpec"]


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: name, default (which fixes the type), meaning and constraints."""

    name: str
    default: Any
    description: str
    applies: str = "live"  # live | activate | configure | startup
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None

    @property
    def read_only(self) -> bool:
        return self.applies == "startup"

    def type_name(self) -> str:
        """ROS parameter type name of the default ('bool', 'integer', 'double', 'string', 'string_array')."""
        if isinstance(self.default, bool):
            return "bool"
        if isinstance(self.default, int):
            return "integer"
        if isinstance(self.default, float):
            return "double"
        if isinstance(self.default, str):
            return "string"
        if isinstance(self.default, (list, tuple)):
            return "string_array"
        raise TypeError(f"unsupported default for {self.name}: {self.default!r}")

    def descriptor(self) -> Any:
        """Build the rcl_interfaces ParameterDescriptor (type, range, read-only, description)."""
        from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

        types = {
            "bool": ParameterType.PARAMETER_BOOL,
            "integer": ParameterType.PARAMETER_INTEGER,
            "double": ParameterType.PARAMETER_DOUBLE,
            "string": ParameterType.PARAMETER_STRING,
            "string_array": ParameterType.PARAMETER_STRING_ARRAY,
        }
        d = ParameterDescriptor(
            name=self.name,
            type=types[self.type_name()],
            description=self.description,
            read_only=self.read_only,
        )
        constraints = []
        if self.choices:
            constraints.append("one of: " + ", ".join(self.choices))
        if self.applies in ("configure", "activate"):
            constraints.append(f"refused while active; applies at {self.applies}")
        d.additional_constraints = "; ".join(constraints)
        if self.int_range:
            d.integer_range = [IntegerRange(from_value=self.int_range[0], to_value=self.int_range[1], step=0)]
        if self.float_range:
            d.floating_point_range = [
                FloatingPointRange(from_value=self.float_range[0], to_value=self.float_range[1], step=0.0)
            ]
        return d


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "autostart",
        True,
        "Configure and activate at start. Set false when a lifecycle manager brings the node up.",
        applies="startup",
    ),
    ParamSpec(
        "keep_freed_memory",
        True,
        "Have glibc's malloc keep freed memory for reuse (large blocks are otherwise unmapped at every free "
        "and page-faulted in again on the next frame): CPU frames 1.1-1.3x faster measured; the process "
        "keeps its peak memory. glibc only.",
        applies="startup",
    ),
    # --- model (chooses code or files: only through a lifecycle reconfigure) ---
    ParamSpec(
        "checkpoint",
        "",
        "Model checkpoint file. Empty: the embedded default model shipped in glip_ros/weights/.",
        applies="configure",
    ),
    ParamSpec(
        "preset",
        "",
        "Model preset (glip_ros.model.config: glip_t_a, glip_t, glip_l, ...) or an official config "
        ".yaml, for checkpoints without an embedded config. Empty: from file.",
        applies="configure",
    ),
    ParamSpec(
        "device",
        "auto",
        "Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:N.",
        applies="configure",
    ),
    ParamSpec(
        "precision",
        "fp32",
        "Precision of Swin + FPN (and of the head with head_precision auto): fp32, fp16 (CUDA only), bf16 "
        "(GPUs; also CPUs with bf16 matrix units: GLIP-T's backbone 2.7x faster on an AMX Xeon).",
        applies="configure",
        choices=("fp32", "fp16", "bf16"),
    ),
    ParamSpec(
        "head_precision",
        "fp32",
        "Precision of the fusion/DyHead head: fp32 (default; only the backbone follows precision), "
        "tf32 (fp32 with TF32 matrix products on GPUs that have them: the fastest measured on H100/H200 for "
        "3 phrases uncompiled; with 1,203 phrases or compile, auto with bf16 was faster), "
        "auto (the head follows precision too; with bf16 on an AMX Xeon GLIP-T's head ran 1.8x faster).",
        applies="configure",
        choices=("fp32", "tf32", "auto"),
    ),
    ParamSpec(
        "cuda_graphs",
        True,
        "On CUDA, capture the backbone and head once per frame size and query length as CUDA graphs and "
        "replay them (2.4x faster measured on an H200). Ignored on CPU.",
        applies="configure",
    ),
    ParamSpec(
        "compile",
        "off",
        "torch.compile the per-frame modules: off, head (fusion + DyHead tower), all (also the backbone). "
        "Fuses the element-wise work of the head. The first frame compiles (tens of seconds to minutes), and "
        "so does the first change of frame size or query length (one shape-generic graph; later changes are "
        "free). A compiled-code failure falls back to eager (counted).",
        applies="configure",
        choices=("off", "head", "all"),
    ),
    ParamSpec(
        "min_size",
        -1,
        "Shorter image side fed to the model, in pixels. -1: the checkpoint's own test size (800 for the "
        "official GLIP models, 256 for the embedded default model). 0: keep the image's size.",
        applies="configure",
        int_range=(-1, 4096),
    ),
    ParamSpec(
        "max_size",
        -1,
        "Upper bound of the longer image side fed to the model, in pixels. -1 (or 0): the checkpoint's own "
        "(1333 for the official GLIP models).",
        applies="configure",
        int_range=(-1, 8192),
    ),
    ParamSpec(
        "text_cache_size",
        16,
        "How many encoded queries the engine keeps (LRU), so switching back to a recent query costs nothing.",
        applies="configure",
        int_range=(1, 4096),
    ),
    ParamSpec(
        "num_threads",
        0,
        "torch CPU threads for this process. 0: torch's default (OMP_NUM_THREADS or all cores).",
        applies="configure",
        int_range=(0, 256),
    ),
    ParamSpec(
        "warmup",
        True,
        "Run one dummy forward at configure, so the first real frame is not slow.",
        applies="configure",
    ),
    # --- query and thresholds (live) ---
    ParamSpec(
        "query",
        "",
        "Text to ground, e.g. 'red mug. laptop' or 'red mug, laptop'. Empty: idle (no model work, empty "
        "results). Setting it answers success or the reason the query was rejected.",
    ),
    ParamSpec(
        "max_query_chars",
        2000,
        "Longest query accepted, in characters; longer ones are rejected with a reason (a runaway speech or "
        "LLM output must not stall the model for seconds).",
        int_range=(1, 100000),
    ),
    ParamSpec(
        "score_threshold",
        0.5,
        "Minimum detection score published.",
        float_range=(0.0, 1.0),
    ),
    ParamSpec(
        "max_batch",
        4,
        "Most frames (one per camera) batched into one model call.",
        int_range=(1, 64),
    ),
    ParamSpec(
        "max_rate",
        0.0,
        "Upper bound on model calls per second (shares the GPU/CPU with other work). 0: as fast as it can.",
        float_range=(0.0, 1000.0),
    ),
    ParamSpec(
        "publish_debug_image",
        True,
        "Publish the annotated debug_image (only computed while someone subscribes).",
    ),
    # --- topics and QoS (created in on_activate) ---
    ParamSpec(
        "cameras",
        [""],
        "Camera names. [''] (default): one camera on node-relative topics image, detections, ... ; "
        "['front', 'left']: topics front/image, front/detections, left/image, ...",
        applies="activate",
    ),
    ParamSpec(
        "transport",
        "raw",
        "Image input: raw (sensor_msgs/Image on <image>) or compressed (CompressedImage, <image>/compressed)",
        applies="activate",
        choices=("raw", "compressed"),
    ),
    ParamSpec(
        "image_reliability",
        "best_effort",
        "Reliability of the image subscriptions (depth 1, volatile). best_effort matches every publisher.",
        applies="activate",
        choices=("best_effort", "reliable"),
    ),
    ParamSpec(
        "output_depth",
        10,
        "History depth of the reliable output topics (detections, grounding, debug_image).",
        applies="activate",
        int_range=(1, 1000),
    ),
    ParamSpec(
        "diagnostics_period",
        1.0,
        "Seconds between /diagnostics messages (steady clock).",
        applies="activate",
        float_range=(0.05, 60.0),
    ),
    ParamSpec(
        "warn_throttle",
        5.0,
        "Seconds between repeated warnings of the same kind (bad frames, bad queries); all are counted.",
        float_range=(0.0, 3600.0),
    ),
)

PARAMS_BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}
