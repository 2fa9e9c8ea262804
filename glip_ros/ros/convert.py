"""Conversions between ROS image / detection messages and numpy.

Images come in as ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` and leave as HxWx3 uint8 RGB
arrays, which is what :meth:`glip_ros.engine.GroundingEngine.detect` takes. Results leave as
``vision_msgs/Detection2DArray`` and ``glip_ros/GroundingResult``.

Why this module does not simply call cv_bridge: cv_bridge is not installable from PyPI (it needs OpenCV and
a C++ build), and it copies every frame. Here the common encodings (rgb8, bgr8, rgba8, bgra8, mono8) are
returned as numpy *views* of the message buffer (no copy), ``step`` padding included; the others need
arithmetic and are converted once. cv_bridge is only used, when importable, as a fallback decoder for
compressed formats neither OpenCV nor Pillow can read.

Grayscale scaling (documented in docs/INTERFACES.md):

* ``mono8`` / ``8UC1``: replicated to three channels (a read-only broadcast view).
* ``mono16``: a full-range intensity image, scaled by ``v / 257`` (0..65535 -> 0..255), so the picture looks
  as it would in an image viewer, independent of content.
* ``16UC1`` / ``32FC1`` (usually depth): min-max scaled over the finite, non-zero pixels of the frame
  (zero and NaN/inf are "no measurement" and map to 0). Depth has no fixed range, and a fixed scaling would
  make most scenes black.

Every problem with an input raises :class:`ImageConversionError` with a ``kind`` that the node counts in its
diagnostics, so a stream of bad frames is visible without reading logs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

__all__ = [
    "ENCODINGS",
    "ImageConversionError",
    "check_imgmsg",
    "compressed_to_rgb",
    "detections_to_msg",
    "grounding_result_msg",
    "image_to_rgb",
    "imgmsg_to_rgb",
    "rgb_to_imgmsg",
]


class ImageConversionError(ValueError):
    """A frame that cannot be turned into an RGB array.

    ``kind`` is a short machine-readable reason used as a diagnostics counter key:
    ``unknown_encoding``, ``zero_size``, ``bad_step``, ``short_data``, ``odd_width``, ``corrupt_compressed``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


# encoding -> (bytes per pixel, channels). Encodings are compared lower-case, as sensor_msgs'
# image_encodings.hpp spells them (yuv422 is UYVY byte order, yuv422_yuy2 is YUYV).
ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 3),
    "bgr8": (3, 3),
    "rgba8": (4, 4),
    "bgra8": (4, 4),
    "mono8": (1, 1),
    "8uc1": (1, 1),
    "8uc3": (3, 3),  # OpenCV convention: BGR
    "mono16": (2, 1),
    "16uc1": (2, 1),
    "32fc1": (4, 1),
    "yuv422": (2, 2),  # UYVY
    "uyvy": (2, 2),
    "yuv422_yuy2": (2, 2),  # YUYV
    "yuyv": (2, 2),
}


def _rows(data: Any, height: int, width: int, step: int, bpp: int, encoding: str) -> np.ndarray:
    """Validate sizes and return an (height, width*bpp) uint8 view of ``data`` without copying."""
    if width <= 0 or height <= 0:
        raise ImageConversionError("zero_size", f"image has zero size ({width}x{height})")
    row_bytes = width * bpp
    if step < row_bytes:
        raise ImageConversionError(
            "bad_step", f"step {step} is smaller than width*bytes_per_pixel = {width}*{bpp} = {row_bytes}"
        )
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if buf.dtype != np.uint8:
        buf = buf.view(np.uint8)
    need = step * height
    if buf.size < need:
        raise ImageConversionError(
            "short_data",
            f"{encoding} image {width}x{height} with step {step} needs {need} bytes, got {buf.size}",
        )
    return buf[:need].reshape(height, step)[:, :row_bytes]


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """Replicate a uint8 HxW image into HxWx3 as a read-only broadcast view (no copy)."""
    return np.broadcast_to(gray[:, :, None], (*gray.shape, 3))


def _minmax_to_u8(values: np.ndarray) -> np.ndarray:
    """Scale finite non-zero values to 0..255; zero / NaN / inf (no measurement) become 0."""
    v = values.astype(np.float32, copy=False)
    valid = np.isfinite(v) & (v != 0)
    if not valid.any():
        return np.zeros(v.shape, np.uint8)
    lo = float(v[valid].min())
    hi = float(v[valid].max())
    span = hi - lo
    out = np.zeros(v.shape, np.float32)
    if span > 0:
        out[valid] = (v[valid] - lo) * (255.0 / span)
    else:
        out[valid] = 255.0
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _yuv422_to_rgb(rows: np.ndarray, height: int, width: int, order: str) -> np.ndarray:
    """Convert packed 4:2:2 (two pixels share U and V) to RGB with BT.601 limited-range coefficients."""
    if width % 2:
        raise ImageConversionError("odd_width", f"4:2:2 images need an even width, got {width}")
    quad = rows.reshape(height, width // 2, 4).astype(np.float32)
    if order == "uyvy":
        u, y0, v, y1 = quad[..., 0], quad[..., 1], quad[..., 2], quad[..., 3]
    else:  # yuyv
        y0, u, y1, v = quad[..., 0], quad[..., 1], quad[..., 2], quad[..., 3]
    y = np.stack([y0, y1], axis=-1).reshape(height, width)
    u = np.repeat(u, 2, axis=1) - 128.0
    v = np.repeat(v, 2, axis=1) - 128.0
    c = (y - 16.0) * 1.164
    rgb = np.stack([c + 1.596 * v, c - 0.392 * u - 0.813 * v, c + 2.017 * u], axis=-1)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def image_to_rgb(
    data: Any, height: int, width: int, encoding: str, step: int, is_bigendian: bool = False
) -> np.ndarray:
    """Convert a raw image buffer to an HxWx3 uint8 RGB array.

    ``data`` is anything exposing the buffer protocol (``bytes``, ``array.array`` as rclpy delivers it, a
    numpy array). For rgb8 / bgr8 / rgba8 / bgra8 / mono8 the result is a view into ``data`` (possibly
    non-contiguous and read-only); callers that need a contiguous array use ``np.ascontiguousarray``.

    Raises:
        ImageConversionError: unknown encoding, zero size, step too small, data too short, odd 4:2:2 width.
    """
    enc = (encoding or "").strip().lower()
    if enc not in ENCODINGS:
        raise ImageConversionError(
            "unknown_encoding",
            f"unsupported encoding {encoding!r}; supported: {', '.join(sorted(ENCODINGS))}",
        )
    bpp, _ = ENCODINGS[enc]
    height, width, step = int(height), int(width), int(step)
    rows = _rows(data, height, width, step, bpp, enc)
    if enc == "rgb8":
        return rows.reshape(height, width, 3)
    if enc in ("bgr8", "8uc3"):
        return rows.reshape(height, width, 3)[:, :, ::-1]
    if enc == "rgba8":
        return rows.reshape(height, width, 4)[:, :, :3]
    if enc == "bgra8":
        return rows.reshape(height, width, 4)[:, :, 2::-1]
    if enc in ("mono8", "8uc1"):
        return _gray_to_rgb(rows)
    if enc in ("mono16", "16uc1"):
        dt = np.dtype(">u2" if is_bigendian else "<u2")
        vals = np.ascontiguousarray(rows).view(dt).reshape(height, width)
        if enc == "mono16":
            gray = ((vals.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        else:
            gray = _minmax_to_u8(vals)
        return _gray_to_rgb(gray)
    if enc == "32fc1":
        dt = np.dtype(">f4" if is_bigendian else "<f4")
        vals = np.ascontiguousarray(rows).view(dt).reshape(height, width)
        return _gray_to_rgb(_minmax_to_u8(vals))
    order = "uyvy" if enc in ("yuv422", "uyvy") else "yuyv"
    return _yuv422_to_rgb(rows, height, width, order)


def check_imgmsg(msg: Any) -> None:
    """Cheap O(1) validation of a ``sensor_msgs/Image``'s metadata (encoding, sizes, step, data length).

    The node calls this in the subscription callback, so a stream of malformed frames is counted on arrival
    and never overwrites a good frame waiting for the model. Raises :class:`ImageConversionError`.
    """
    enc = (msg.encoding or "").strip().lower()
    if enc not in ENCODINGS:
        raise ImageConversionError(
            "unknown_encoding",
            f"unsupported encoding {msg.encoding!r}; supported: {', '.join(sorted(ENCODINGS))}",
        )
    bpp = ENCODINGS[enc][0]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if width <= 0 or height <= 0:
        raise ImageConversionError("zero_size", f"image has zero size ({width}x{height})")
    if step < width * bpp:
        raise ImageConversionError(
            "bad_step", f"step {step} is smaller than width*bytes_per_pixel = {width}*{bpp} = {width * bpp}"
        )
    size = len(msg.data)
    if size < step * height:
        raise ImageConversionError(
            "short_data",
            f"{enc} image {width}x{height} with step {step} needs {step * height} bytes, got {size}",
        )
    if enc in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv") and width % 2:
        raise ImageConversionError("odd_width", f"4:2:2 images need an even width, got {width}")


def imgmsg_to_rgb(msg: Any) -> np.ndarray:
    """Convert a ``sensor_msgs/Image`` to HxWx3 uint8 RGB (see :func:`image_to_rgb`)."""
    return image_to_rgb(msg.data, msg.height, msg.width, msg.encoding, msg.step, bool(msg.is_bigendian))


def _decode_pil(data: bytes) -> np.ndarray:
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as im:
        im.load()  # forces the full decode, so truncated files fail here and not later
        return np.asarray(im.convert("RGB"))


def _decode_cv2(data: bytes) -> np.ndarray:
    import cv2  # type: ignore[import-not-found]

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise ValueError("cv2.imdecode returned nothing")
    return arr[:, :, ::-1]


def _decoders() -> list[Any]:
    decoders = []
    try:
        import cv2  # type: ignore[import-not-found]  # noqa: F401

        decoders.append(_decode_cv2)
    except ImportError:
        pass
    try:
        import PIL  # noqa: F401

        decoders.append(_decode_pil)
    except ImportError:
        pass
    return decoders


MAX_COMPRESSED_PIXELS = 1 << 26  # 64 Mpx: twice an 8K frame; a small PNG can declare gigabytes of pixels


def _check_declared_size(raw: bytes) -> None:
    """Refuse an image whose header declares too many pixels, before a decoder allocates them.

    Pillow reads only the header here (and raises its own DecompressionBombError past twice its limit).
    Without Pillow, or for a header it cannot read, the decoders' own errors speak instead.
    """
    try:
        import io

        from PIL import Image as PILImage
    except ImportError:
        return
    try:
        with PILImage.open(io.BytesIO(raw)) as im:
            pixels = int(im.size[0]) * int(im.size[1])
    except PILImage.DecompressionBombError as exc:
        raise ImageConversionError("unusable_size", f"compressed image not decoded: {exc}") from None
    except Exception:  # noqa: BLE001 - unreadable header: left to the decoders
        return
    if pixels > MAX_COMPRESSED_PIXELS:
        raise ImageConversionError(
            "unusable_size",
            f"compressed image declares {pixels} pixels, more than {MAX_COMPRESSED_PIXELS}; not decoded",
        )


def compressed_to_rgb(data: Any, fmt: str = "") -> np.ndarray:
    """Decode JPEG/PNG bytes (``sensor_msgs/CompressedImage.data``) to HxWx3 uint8 RGB.

    OpenCV is used when installed (fastest), else Pillow. ``fmt`` is only used in error messages: the
    decoders detect the format from the bytes, which is more reliable than the free-text ``format`` field.

    Raises:
        ImageConversionError: kind ``corrupt_compressed`` for empty, truncated or undecodable data, or when no
        decoder is installed; ``unusable_size`` when the header declares more than ``MAX_COMPRESSED_PIXELS``
        (checked before decoding, which would allocate them).
    """
    raw = bytes(data)
    if not raw:
        raise ImageConversionError("corrupt_compressed", f"empty compressed image (format {fmt!r})")
    _check_declared_size(raw)
    decoders = _decoders()
    if not decoders:
        raise ImageConversionError("corrupt_compressed", "no image decoder installed (need Pillow or OpenCV)")
    last: Exception | None = None
    for decode in decoders:
        try:
            rgb = decode(raw)
        except Exception as exc:  # noqa: BLE001 - any decoder failure means the same thing: corrupt data
            last = exc
            continue
        if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
            last = ValueError(f"decoded to shape {rgb.shape}")
            continue
        return rgb
    raise ImageConversionError(
        "corrupt_compressed", f"cannot decode {len(raw)} bytes of compressed image (format {fmt!r}): {last}"
    )


def rgb_to_imgmsg(rgb: np.ndarray, header: Any = None) -> Any:
    """Build an rgb8 ``sensor_msgs/Image`` from an HxWx3 uint8 array, copying ``header`` (stamp, frame_id)."""
    from sensor_msgs.msg import Image

    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1] * 3)
    msg.data = arr.tobytes()
    return msg


class DetectionLike(Protocol):
    """What the builders need from a detection (``glip_ros.engine.Detection`` satisfies it)."""

    box_xyxy: tuple[float, float, float, float]
    score: float
    phrase: str
    phrase_index: int


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else 0.0


def detections_to_msg(header: Any, detections: Sequence[DetectionLike]) -> Any:
    """Build a ``vision_msgs/Detection2DArray`` from engine detections.

    The array and every Detection2D carry ``header`` (the source image's header) so consumers can
    synchronise on it; boxes are centre/size in the original image's pixels; each detection has one
    hypothesis whose ``class_id`` is the grounded phrase and whose ``score`` is the detection score.
    ``Detection2D.id`` stays empty: vision_msgs reserves it for tracking.
    """
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    out = Detection2DArray()
    out.header = header
    for det in detections:
        x0, y0, x1, y1 = (_finite(v) for v in det.box_xyxy)
        d = Detection2D()
        d.header = header
        d.bbox.center.position.x = (x0 + x1) / 2.0
        d.bbox.center.position.y = (y0 + y1) / 2.0
        d.bbox.center.theta = 0.0
        d.bbox.size_x = max(0.0, x1 - x0)
        d.bbox.size_y = max(0.0, y1 - y0)
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = str(det.phrase)
        hyp.hypothesis.score = min(1.0, max(0.0, _finite(det.score)))
        d.results.append(hyp)
        out.detections.append(d)
    return out


def grounding_result_msg(
    header: Any, camera: str, query_id: int, detections: Sequence[DetectionLike], array: Any = None
) -> Any:
    """Build a ``glip_ros/GroundingResult``: the Detection2DArray tagged with query id and phrase indices.

    ``array`` may pass an already built Detection2DArray for the same detections, to avoid building it twice.
    """
    from glip_ros.msg import GroundingResult

    out = GroundingResult()
    out.header = header
    out.camera = camera
    out.query_id = int(query_id)
    out.detections = array if array is not None else detections_to_msg(header, detections)
    out.phrase_indices = [max(0, int(d.phrase_index)) for d in detections]
    return out
