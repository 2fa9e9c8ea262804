"""Annotated debug images: boxes and "phrase score" labels, one colour per phrase.

Pillow only (no OpenCV), because Pillow is a hard dependency anyway and the debug image must work on every
install. Colours are indexed by phrase index, so a phrase keeps its colour for the life of a query and the
same query always looks the same in rviz.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PALETTE", "color_for", "draw_detections"]

# High-contrast colours (Tableau 10), RGB.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def color_for(phrase_index: int) -> tuple[int, int, int]:
    """Stable colour of a phrase index."""
    return PALETTE[int(phrase_index) % len(PALETTE)]


def draw_detections(rgb: np.ndarray, detections: Sequence[Any], line_width: int | None = None) -> np.ndarray:
    """Return a copy of ``rgb`` (HxWx3 uint8) with each detection's box and "phrase 0.87" label drawn.

    ``detections`` are objects with ``box_xyxy``, ``score``, ``phrase`` and ``phrase_index`` (the engine's
    Detection). The input array is never modified (it may be a read-only view of a ROS message).
    """
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if not detections:
        return np.asarray(img).copy()
    draw = ImageDraw.Draw(img)
    h, w = rgb.shape[:2]
    lw = line_width or max(1, round(min(h, w) / 240))
    try:
        font = ImageFont.load_default(size=max(10, round(min(h, w) / 40)))
    except TypeError:  # Pillow < 10.1 has no size argument
        font = ImageFont.load_default()
    for det in detections:
        x0, y0, x1, y1 = (float(v) for v in det.box_xyxy)
        x0, x1 = sorted((min(max(x0, 0.0), w - 1.0), min(max(x1, 0.0), w - 1.0)))
        y0, y1 = sorted((min(max(y0, 0.0), h - 1.0), min(max(y1, 0.0), h - 1.0)))
        color = color_for(det.phrase_index)
        draw.rectangle((x0, y0, x1, y1), outline=color, width=lw)
        label = f"{det.phrase} {float(det.score):.2f}"
        tb = draw.textbbox((0, 0), label, font=font)
        tw, th = tb[2] - tb[0], tb[3] - tb[1]
        ty = y0 - th - 2 * lw if y0 - th - 2 * lw >= 0 else y0  # above the box, else inside it
        draw.rectangle((x0, ty, x0 + tw + 2 * lw, ty + th + 2 * lw), fill=color)
        draw.text((x0 + lw - tb[0], ty + lw - tb[1]), label, fill=(255, 255, 255), font=font)
    return np.asarray(img).copy()
