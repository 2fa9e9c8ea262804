"""Unit tests of glip_ros.ros.draw: boxes land where the detection says, colours follow the phrase."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glip_ros.ros.draw import color_for, draw_detections


@dataclass
class Det:
    box_xyxy: tuple[float, float, float, float]
    score: float
    phrase: str
    phrase_index: int


def test_box_outline_in_phrase_colour_and_input_untouched() -> None:
    img = np.zeros((120, 160, 3), np.uint8)
    img.setflags(write=False)  # converted ROS frames are read-only views
    out = draw_detections(img, [Det((40.0, 50.0, 120.0, 110.0), 0.87, "red circle", 1)])
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not img.any()
    assert tuple(out[80, 40]) == color_for(1)  # left edge of the box
    assert tuple(out[110, 80]) == color_for(1)  # bottom edge
    assert not out[80, 80].any()  # inside the box stays untouched
    assert color_for(0) != color_for(1)


def test_boxes_outside_the_image_are_clipped_and_empty_list_copies() -> None:
    img = np.full((30, 40, 3), 9, np.uint8)
    out = draw_detections(img, [Det((-50.0, -5.0, 500.0, 400.0), 0.5, "x", 0)])
    assert out.shape == img.shape
    same = draw_detections(img, [])
    np.testing.assert_array_equal(same, img)
    assert not np.shares_memory(same, img)
