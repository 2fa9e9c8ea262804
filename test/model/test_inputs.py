"""Odd images and queries give a clear exception or a defined, documented result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glip_ros.detector import GLIPDetector
from glip_ros.engine import ImageError
from glip_ros.model import build_model
from glip_ros.prompt import QueryError


@pytest.fixture(scope="module")
def det():
    torch.manual_seed(0)
    return GLIPDetector(build_model("glip_tiny_test"))


RGB = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "query,match",
    [
        ("", "empty"),
        ("   ", "empty"),
        (" .,;. ", "no words"),
        ("red circle " * 1000, "alone needs"),
        ("red circle. " + "big " * 300 + "mug", "alone needs"),
    ],
)
def test_bad_queries(det, query, match):
    with pytest.raises(QueryError, match=match):
        det.predict(RGB, query, min_size=None)


def test_ten_thousand_character_query_of_phrases_is_chunked(det):
    query = ". ".join(f"object{i}" for i in range(1200))
    assert len(query) > 10000
    dets = det.predict(RGB, query, score_threshold=0.0, min_size=None)
    assert all(0 <= d.phrase_index < 1200 for d in dets)


def test_grayscale_rgba_and_tiny_images_are_defined(det):
    gray = RGB[:, :, 0]
    a = det.predict(gray, "red circle", score_threshold=0.0, min_size=None)
    b = det.predict(np.repeat(gray[:, :, None], 3, axis=2), "red circle", score_threshold=0.0, min_size=None)
    assert [d.box_xyxy for d in a] == [d.box_xyxy for d in b]
    rgba = np.concatenate([RGB, np.full((64, 96, 1), 7, np.uint8)], axis=2)
    c = det.predict(rgba, "red circle", score_threshold=0.0, min_size=None)
    d = det.predict(RGB, "red circle", score_threshold=0.0, min_size=None)
    assert [x.box_xyxy for x in c] == [x.box_xyxy for x in d]
    one = det.predict(np.zeros((1, 1, 3), np.uint8), "red circle", score_threshold=0.0, min_size=None)
    assert all(x.box_xyxy[2] <= 0 and x.box_xyxy[3] <= 0 for x in one)  # clipped to the 1×1 image
    big = det.predict(
        np.zeros((1, 1, 3), np.uint8), "red circle", score_threshold=0.0, min_size=64, max_size=64
    )
    assert all(0 <= v <= 1 for x in big for v in x.box_xyxy)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((4, 4, 3), np.float32), "uint8"),
        (np.zeros((0, 4, 3), np.uint8), "no pixels"),
        (np.zeros((4, 4, 2), np.uint8), "channels"),
        ([[1, 2]], "numpy"),
    ],
)
def test_bad_images(det, bad, match):
    with pytest.raises(ImageError, match=match):
        det.predict(bad, "red circle", min_size=None)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(score_threshold=float("nan")), "score_threshold"),
        (dict(score_threshold=1.5), "score_threshold"),
        (dict(score_threshold=None), "score_threshold"),
        (dict(min_size=0), "min_size"),
        (dict(min_size=-5), "min_size"),
        (dict(min_size=True), "min_size"),
        (dict(max_size=0), "max_size"),
    ],
)
def test_bad_detect_arguments_are_named(det, kwargs, match):
    with pytest.raises(ValueError, match=match):
        det.predict(RGB, "red circle", **kwargs)


def test_frames_the_model_cannot_take_are_refused_before_running(det):
    with pytest.raises(ImageError, match="aspect ratio too extreme"):
        det.predict(np.zeros((1, 5000, 3), np.uint8), "red circle", min_size=256, max_size=448)
    with pytest.raises(ImageError, match="pixels"):  # would have needed tens of GB
        det.predict(RGB, "red circle", min_size=100_000, max_size=None)
    assert det.engine.frame_size_error(64, 96) is None


def test_a_phrase_list_counts_against_max_query_chars():
    from glip_ros.engine import GroundingEngine

    engine = GroundingEngine(build_model("glip_tiny_test"), max_query_chars=100)
    with pytest.raises(QueryError, match="max_query_chars"):
        engine.prepare_query([f"thing{i}" for i in range(30)])
