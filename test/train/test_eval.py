"""Evaluation: the numpy COCO mAP must reproduce pycocotools; grounding recall on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from glip_ros.eval.coco import coco_map_numpy
from glip_ros.eval.grounding import grounding_recall


def _fixture(seed: int = 0) -> tuple[dict, list[dict]]:
    """3 categories, 12 images; detections: jittered GT, duplicates, misses, false positives, empty class."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 200, "height": 200, "file_name": f"{i}.png"} for i in range(12)]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    anns, dets = [], []
    for im in images:
        for _ in range(int(rng.integers(0, 5))):
            cid = int(rng.integers(1, 3))  # category 3 never has GT: its detections must not count
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(8, 50, 2)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": im["id"],
                    "category_id": cid,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            if rng.random() < 0.85:
                j = rng.normal(0, 3, 4)
                dets.append(
                    {
                        "image_id": im["id"],
                        "category_id": cid,
                        "score": float(rng.uniform(0.3, 1)),
                        "bbox": [x + j[0], y + j[1], max(w + j[2], 1), max(h + j[3], 1)],
                    }
                )
            if rng.random() < 0.3:  # duplicate
                dets.append(
                    {
                        "image_id": im["id"],
                        "category_id": cid,
                        "score": float(rng.uniform(0, 0.6)),
                        "bbox": [x + 2, y - 1, w, h],
                    }
                )
        for _ in range(int(rng.integers(0, 3))):  # false positives
            dets.append(
                {
                    "image_id": im["id"],
                    "category_id": int(rng.integers(1, 4)),
                    "score": float(rng.uniform(0, 1)),
                    "bbox": [*rng.uniform(0, 150, 2), 20.0, 20.0],
                }
            )
    return {"images": images, "annotations": anns, "categories": cats}, dets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_map_matches_pycocotools(seed: int) -> None:
    pytest.importorskip("pycocotools")
    from glip_ros.eval.coco import coco_map_pycocotools

    gt, dets = _fixture(seed)
    ref = coco_map_pycocotools(gt, dets)
    ours = coco_map_numpy(gt, dets)
    for key in ("AP", "AP50", "AP75"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-9), key
    assert 0.1 < ref["AP"] < 0.95  # the fixture is neither trivial nor hopeless


def test_perfect_and_empty_detections() -> None:
    gt, _ = _fixture(0)
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
    ]
    assert coco_map_numpy(gt, perfect)["AP"] == pytest.approx(1.0)
    assert coco_map_numpy(gt, [])["AP"] == 0.0


def test_grounding_recall_any_box_protocol() -> None:
    gt = [[0, 0, 10, 10], [50, 50, 10, 10]]
    items = [
        # best box hits the *second* GT box: a hit at 1 (any-box protocol)
        {"gt_boxes": gt, "pred_boxes": [[50, 50, 10, 10], [0, 0, 3, 3]], "pred_scores": [0.9, 0.1]},
        # right box only at rank 2: miss at 1, hit at 5
        {
            "gt_boxes": gt,
            "pred_boxes": [[100, 100, 5, 5], [1, 1, 10, 10]],
            "pred_scores": [0.9, 0.5],
            "kind": "referring",
        },
        # no prediction: a miss everywhere
        {"gt_boxes": [[0, 0, 5, 5]], "pred_boxes": [], "pred_scores": [], "kind": "referring"},
        # negative phrase: not counted
        {"gt_boxes": [], "pred_boxes": [[0, 0, 5, 5]], "pred_scores": [1.0]},
    ]
    r = grounding_recall(items)
    assert r["n"] == 3
    assert r["R@1"] == pytest.approx(1 / 3)
    assert r["R@5"] == pytest.approx(2 / 3)
    assert r["by_kind"]["referring"] == {"R@1": 0.0, "R@5": 0.5, "R@10": 0.5, "n": 2}
