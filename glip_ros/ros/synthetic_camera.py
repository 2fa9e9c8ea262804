"""``synthetic_camera``: publishes rendered scenes of coloured shapes, for demos and tests without a camera.

Why: the demo and the sim launch must show grounding on a machine with no camera and no simulator. The scenes
contain the objects the default model was trained on (coloured circles, squares, triangles), so queries such
as "red circle. blue square" have something to find. When the training engineer's scene generator
(``glip_ros.data.scenes``) is importable, it is used; otherwise a small numpy renderer draws the shapes.

Publishes ``image`` (sensor_msgs/Image rgb8, reliable, depth 1 — REP-2003 driver style; best-effort
subscribers match it) and ``image/compressed`` when ``compressed`` is true. The layout changes every
``scene_period`` seconds; objects drift slowly in between so a viewer sees motion.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DEMO_OBJECTS", "SceneObject", "SceneSource", "main", "render_scene"]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 205, 30),
}
SHAPES = ("circle", "square", "triangle")


@dataclass
class SceneObject:
    """One rendered object: its name ("red circle") and box (x0, y0, x1, y1) in pixels."""

    color: str
    shape: str
    box: tuple[float, float, float, float]

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


def _layout(scene: int, width: int, height: int, seed: int) -> list[tuple[str, str, float, float, float]]:
    """Objects of a scene as (color, shape, cx, cy, size); the three demo objects are always present."""
    rng = np.random.default_rng(seed * 100_003 + scene)
    objs = [("red", "circle"), ("blue", "square"), ("green", "triangle")]
    others = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in objs]
    for k in rng.choice(len(others), size=int(rng.integers(0, 3)), replace=False):
        objs.append(others[int(k)])
    placed: list[tuple[str, str, float, float, float]] = []
    base = min(width, height)
    for color, shape in objs:
        size = float(rng.uniform(0.16, 0.28) * base)
        for _ in range(50):  # rejection sampling: keep objects apart so boxes are unambiguous
            cx = float(rng.uniform(size * 0.6, width - size * 0.6))
            cy = float(rng.uniform(size * 0.6, height - size * 0.6))
            if all(math.hypot(cx - p[2], cy - p[3]) > (size + p[4]) * 0.6 for p in placed):
                break
        placed.append((color, shape, cx, cy, size))
    return placed


def render_scene(
    frame: int,
    width: int = 640,
    height: int = 480,
    seed: int = 0,
    fps: float = 10.0,
    scene_period: float = 4.0,
) -> tuple[np.ndarray, list[SceneObject]]:
    """Render frame number ``frame``: an HxWx3 uint8 RGB image and the objects in it (ground truth)."""
    t = frame / max(fps, 1e-6)
    scene = int(t // max(scene_period, 1e-6))
    rng = np.random.default_rng(seed * 7919 + frame)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = (200, 200, 196)
    img += rng.integers(0, 12, (height, width, 1), dtype=np.uint8)  # sensor noise keeps JPEG honest
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    objects = []
    for i, (color, shape, cx, cy, size) in enumerate(_layout(scene, width, height, seed)):
        drift = 0.04 * min(width, height)
        cx += drift * math.sin(0.7 * t + i)
        cy += drift * math.cos(0.5 * t + 2 * i)
        r = size / 2
        if shape == "circle":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        elif shape == "square":
            mask = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
        else:  # upward triangle with apex at the top
            top, bottom = cy - r, cy + r
            half = (yy - top) / (2 * r) * r
            mask = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)
        img[mask] = COLORS[color]
        box = (max(0.0, cx - r), max(0.0, cy - r), min(width - 1.0, cx + r), min(height - 1.0, cy + r))
        objects.append(SceneObject(color, shape, box))
    return img, objects


DEMO_OBJECTS: tuple[tuple[str, str], ...] = (("red", "circle"), ("blue", "square"), ("green", "triangle"))


class SceneSource:
    """Frames for the camera: the training engineer's generator when importable, else :func:`render_scene`.

    ``glip_ros.data.scenes`` draws the scenes the default model was trained on, so the demo shows real
    grounding. Its scenes are random, so a pool is rendered once at start-up (``pool_tries`` candidates; the
    node loads its model meanwhile) and the scenes holding the most demo objects (red circle, blue square,
    green triangle) are kept; the camera shows one per ``scene_period``, with fresh sensor noise per frame.
    """

    def __init__(
        self, width: int, height: int, seed: int, fps: float, scene_period: float, pool_tries: int = 24
    ) -> None:
        self.width, self.height, self.seed, self.fps, self.period = width, height, seed, fps, scene_period
        self._pool: list[np.ndarray] = []
        try:
            from glip_ros.data import scenes

            if callable(getattr(scenes, "render_scene", None)) and hasattr(scenes, "SceneSpec"):
                self._pool = self._render_pool(scenes, pool_tries)
        except Exception:  # noqa: BLE001 - optional: fall back to the built-in renderer
            self._pool = []

    def _render_pool(self, scenes: Any, tries: int) -> list[np.ndarray]:
        spec = scenes.SceneSpec(width=self.width, height=self.height, min_objects=4, require=DEMO_OBJECTS)
        scored = []
        for k in range(max(1, tries)):
            scene = scenes.render_scene(np.random.default_rng(self.seed * 100_003 + k), spec)
            hits = len({(o.color, o.shape) for o in scene.objects} & set(DEMO_OBJECTS))
            scored.append((hits, k, np.asarray(scene.image, np.uint8)))
        best = max(h for h, _, _ in scored)
        keep = [img for h, _, img in scored if h >= min(best, 2)]
        return keep[:8]

    @property
    def name(self) -> str:
        return f"glip_ros.data.scenes, {len(self._pool)} scenes" if self._pool else "built-in shapes"

    def frame(self, index: int) -> np.ndarray:
        """HxWx3 uint8 RGB frame number ``index``."""
        if not self._pool:
            return render_scene(index, self.width, self.height, self.seed, self.fps, self.period)[0]
        scene_idx = int(index / max(self.fps, 1e-6) // max(self.period, 1e-6))
        base = self._pool[scene_idx % len(self._pool)]
        noise = np.random.default_rng(self.seed * 7919 + index).integers(0, 6, (self.height, self.width, 1))
        return np.clip(base.astype(np.int16) + noise - 3, 0, 255).astype(np.uint8)


def main(args: list[str] | None = None) -> None:
    """Console entry: run the synthetic camera node until interrupted."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image

    class SyntheticCamera(Node):
        def __init__(self) -> None:
            super().__init__("synthetic_camera")
            self.width = int(self.declare_parameter("width", 640).value)
            self.height = int(self.declare_parameter("height", 480).value)
            self.rate = float(self.declare_parameter("rate", 10.0).value)
            self.frame_id = str(self.declare_parameter("frame_id", "camera").value)
            self.seed = int(self.declare_parameter("seed", 0).value)
            self.scene_period = float(self.declare_parameter("scene_period", 4.0).value)
            self.compressed = bool(self.declare_parameter("compressed", False).value)
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=1,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.VOLATILE,
            )
            self.pub = self.create_publisher(Image, "image", qos)
            self.pub_c = (
                self.create_publisher(CompressedImage, "image/compressed", qos) if self.compressed else None
            )
            self.source = SceneSource(self.width, self.height, self.seed, self.rate, self.scene_period)
            self.frame = 0
            self.timer = self.create_timer(1.0 / max(self.rate, 0.1), self.tick)
            self.get_logger().info(
                f"publishing {self.width}x{self.height} rgb8 at {self.rate} Hz on {self.pub.topic_name} "
                f"({self.source.name})"
            )

        def tick(self) -> None:
            rgb = self.source.frame(self.frame)
            self.frame += 1
            msg = Image()
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.header.frame_id = self.frame_id
            msg.height, msg.width = rgb.shape[:2]
            msg.encoding = "rgb8"
            msg.step = rgb.shape[1] * 3
            msg.data = rgb.tobytes()
            self.pub.publish(msg)
            if self.pub_c is not None:
                from PIL import Image as PILImage

                buf = io.BytesIO()
                PILImage.fromarray(rgb).save(buf, format="JPEG", quality=90)
                cmsg = CompressedImage(header=msg.header, format="jpeg")
                cmsg.data = buf.getvalue()
                self.pub_c.publish(cmsg)

    rclpy.init(args=args)
    node = SyntheticCamera()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
