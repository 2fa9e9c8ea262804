"""COCO -> grounding conversion and the bad-input cases: missing images, empty annotations, boxes outside the
image, category names over 256 tokens, empty training sets."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from glip_ros.data import scenes as S
from glip_ros.train.datasets import (
    CocoGroundingDataset,
    DatasetError,
    SyntheticGroundingDataset,
    get_train_tokenizer,
    od_to_grounding,
    positive_map_from_spans,
)


def _write(tmp_path, images, anns, cats, make_files=True):
    for im in images:
        if make_files:
            Image.fromarray(np.zeros((im["height"], im["width"], 3), np.uint8)).save(
                tmp_path / im["file_name"]
            )
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path)


def _img(i):
    return {"id": i, "file_name": f"{i}.png", "width": 64, "height": 48}


def _ann(i, img, cat, box):
    return {"id": i, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}


CATS = [{"id": 1, "name": "red_circle"}, {"id": 2, "name": "square (blue)"}, {"id": 3, "name": "star"}]


def test_detection_to_grounding_prompt(tmp_path) -> None:
    path = _write(tmp_path, [_img(1)], [_ann(1, 1, 1, [1, 1, 10, 10]), _ann(2, 1, 3, [20, 20, 10, 10])], CATS)
    ds = CocoGroundingDataset(path)
    item = ds[0]
    cap = item["caption"]
    # clean_name: underscores to spaces, "(...)" removed; positives always present, joined by ". "
    spans = [s for sp in item["box_spans"] for s in sp]
    assert sorted(cap[s:e] for s, e in spans) == ["red circle", "star"]
    assert set(cap.split(". ")) <= {"red circle", "square", "star"}
    tok = get_train_tokenizer()
    enc = tok([cap], return_tensors="pt")
    pm = positive_map_from_spans(enc[0], item["box_spans"], enc["input_ids"].shape[1])
    assert pm.sum(1).tolist() == [2.0, 1.0]  # "red circle" = 2 tokens, "star" = 1


def test_od_to_grounding_token_budget() -> None:
    names = {i: f"name{i}" for i in range(1, 400)}
    token_len = dict.fromkeys(names, 3)
    cap, spans = od_to_grounding([1, 2], names, token_len, np.random.default_rng(0), max_negatives=400)
    assert 1 in spans and 2 in spans
    assert len(get_train_tokenizer()(cap)["input_ids"]) <= 256


def test_fixed_fine_tuning_prompt_is_the_evaluation_prompt(tmp_path) -> None:
    """max_negatives=-1, shuffle off (the official fine-tuning prompt): every image gets all category names in
    id order, the caption glip-eval uses; prompt tuning's per-position offset depends on it."""
    from glip_ros.eval.evaluate import category_prompt
    from glip_ros.train.datasets import clean_name
    from glip_ros.train.trainer import build_dataset

    images = [_img(1), _img(2)]
    anns = [_ann(1, 1, 3, [1, 1, 10, 10]), _ann(2, 2, 2, [5, 5, 10, 10]), _ann(3, 2, 1, [20, 20, 9, 9])]
    path = _write(tmp_path, images, anns, CATS)
    want, want_spans = category_prompt([clean_name(c["name"]) for c in CATS])
    spec = {"type": "coco", "json": path, "max_negatives": -1, "shuffle": False}
    ds = build_dataset(spec, seed=3)
    for epoch in range(3):
        ds.set_epoch(epoch)
        a, b = ds[0], ds[1]
        assert a["caption"] == b["caption"] == want == "red circle. square. star"
        assert a["box_spans"] == [[want_spans[2]]]
        assert b["box_spans"] == [[want_spans[1]], [want_spans[0]]]
    shuffled = build_dataset({"type": "coco", "json": path, "max_negatives": 0}, seed=3)
    assert shuffled[0]["caption"] == "star"  # the default: positives (+ sampled negatives), shuffled


def test_missing_image_is_skipped_and_counted(tmp_path, caplog) -> None:
    images = [_img(1), _img(2)]
    path = _write(tmp_path, images, [_ann(1, 1, 1, [1, 1, 5, 5]), _ann(2, 2, 1, [1, 1, 5, 5])], CATS)
    os.remove(tmp_path / "2.png")
    with caplog.at_level(logging.WARNING):
        ds = CocoGroundingDataset(path)
    assert len(ds) == 1 and ds.stats["missing_image_files"] == 1
    assert "missing_image_files=1" in caplog.text
    os.remove(tmp_path / "1.png")
    with pytest.raises(DatasetError, match="no usable image.*missing_image_files=2"):
        CocoGroundingDataset(path)


def test_empty_annotation_list_is_an_error(tmp_path) -> None:
    path = _write(tmp_path, [_img(1)], [], CATS)
    with pytest.raises(DatasetError, match="annotation list is empty"):
        CocoGroundingDataset(path)


def test_boxes_outside_image_are_clipped_or_skipped(tmp_path) -> None:
    anns = [
        _ann(1, 1, 1, [-5, -5, 20, 20]),  # partly outside: clipped to [0,0,15,15]
        _ann(2, 1, 1, [100, 100, 10, 10]),  # entirely outside: skipped
        _ann(3, 1, 3, [10, 10, 5, 5]),
    ]
    ds = CocoGroundingDataset(_write(tmp_path, [_img(1)], anns, CATS))
    assert ds.stats["boxes_clipped_to_image"] == 2
    assert ds.stats["boxes_empty_after_clipping"] == 1
    assert ds.items[0]["boxes"][0] == [0.0, 0.0, 15.0, 15.0]
    assert len(ds.items[0]["boxes"]) == 2


def test_category_name_over_256_tokens(tmp_path) -> None:
    cats = [{"id": 1, "name": " ".join(["word"] * 300)}, {"id": 2, "name": "ok"}]
    anns = [_ann(1, 1, 1, [1, 1, 5, 5]), _ann(2, 1, 2, [10, 10, 5, 5])]
    ds = CocoGroundingDataset(_write(tmp_path, [_img(1)], anns, cats))
    assert ds.stats["categories_over_256_tokens"] == 1
    assert ds.stats["boxes_of_dropped_categories"] == 1
    assert ds[0]["caption"] == "ok"
    with pytest.raises(DatasetError, match="no usable category"):
        CocoGroundingDataset(_write(tmp_path, [_img(1)], anns[:1], cats[:1]))


def test_kshot_says_which_categories_have_fewer_than_k_images(tmp_path, caplog) -> None:
    from glip_ros.train.trainer import kshot_subset

    images = [_img(i) for i in range(1, 6)]
    anns = [_ann(i, i, 1, [2, 2, 10, 10]) for i in range(1, 5)] + [_ann(9, 5, 3, [2, 2, 10, 10])]
    ds = CocoGroundingDataset(_write(tmp_path, images, anns, CATS))
    with caplog.at_level(logging.WARNING, logger="glip_ros.train.trainer"):
        sub = kshot_subset(ds, 3, None, seed=0)
    labels = [set(item["labels"]) for item in sub.items]
    assert sum(1 in lab for lab in labels) == 3 and sum(3 in lab for lab in labels) == 1
    assert "2 of 3 categories have fewer than 3 images" in caplog.text
    assert "square: 0" in caplog.text and "star: 1" in caplog.text and "red_circle" not in caplog.text


def test_empty_training_set_refused(tmp_path) -> None:
    with pytest.raises(DatasetError):
        SyntheticGroundingDataset(size=0)
    from glip_ros.train.cli import train_main

    path = _write(tmp_path, [_img(1)], [_ann(1, 1, 1, [1, 1, 5, 5])], CATS, make_files=False)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{type: coco, json: {path}}}\nsteps: 1\nout_dir: {tmp_path / 'run'}\n")
    assert train_main(["--config", str(cfg)]) == 2  # an error message, not a run on nothing
    assert not (tmp_path / "run").exists()


def test_generated_split_roundtrip(tmp_path) -> None:
    path = S.write_split(str(tmp_path), "heldout", 3, seed=0)
    coco = json.loads(open(path).read())
    assert len(coco["images"]) == 3 and coco["grounding"]
    combos = S.combo_eval_coco(coco)
    assert all(a["category_id"] in (1, 2, 3) for a in combos["annotations"]) and combos["annotations"]
    ds = CocoGroundingDataset(path, mode="grounding")
    item = ds[0]
    assert item["caption"] == coco["grounding"][0]["caption"] and len(item["boxes"]) > 0
    # the same scene rendered on the fly
    scene = S.render_scene(S.split_rng(0, "heldout", 0), S.SPLIT_SPECS["heldout"])
    assert scene.caption == item["caption"]
    # held-out combos never appear in training scenes
    for i in range(30):
        sc = S.render_scene(S.split_rng(0, "train", i), S.SPLIT_SPECS["train"])
        assert not any(
            (o.color, o.shape) in S.HELDOUT_COMBOS or o.shape in S.NOVEL_SHAPES for o in sc.objects
        )
