"""Parity with the official GLIP code on the shared reduced GLIP-T fixture (fp32, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

CAPTION = "red circle. blue square. green triangle."
ATOL = 1e-4


def _close(ours: torch.Tensor, ref: np.ndarray, atol: float = ATOL, name: str = "") -> None:
    ours = ours.detach().float().numpy()
    assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
    diff = float(np.abs(ours - ref).max())
    assert diff <= atol, f"{name}: max |diff| {diff:.3g} > {atol}"


@pytest.fixture(scope="module")
def run(reduced_model, reduced_tensors):
    t = reduced_tensors
    m = reduced_model
    with torch.inference_mode():
        img = torch.from_numpy(t["input__image_tensor"])
        text = m.encode_text(
            torch.from_numpy(t["input__input_ids"]), torch.from_numpy(t["input__attention_mask"])
        )
        fpn, body = m.backbone(img, return_body=True)
        out = m.forward_head(fpn, text)
        anchors = m.anchors(fpn)
    return text, fpn, body, out, anchors


def test_tokenization_matches_fixture(reduced_tensors):
    from glip_ros.prompt import build_prompt

    p = build_prompt(CAPTION)
    assert p.input_ids.tolist() == reduced_tensors["input__input_ids"].tolist()
    assert p.attention_mask.tolist() == reduced_tensors["input__attention_mask"].tolist()
    assert p.token_lists == [
        [1, 2],
        [4, 5],
        [7, 8],
    ]  # positive_map_label_to_token {1:[1,2], 2:[4,5], 3:[7,8]}


def test_preprocessing_matches_fixture(reduced_model, reduced_tensors, fixture_image):
    batch, sizes, _ = reduced_model.preprocess([fixture_image], min_size=None, max_size=None)
    _close(batch, reduced_tensors["input__image_tensor"], atol=0.0, name="input")
    assert sizes == [(320, 480)]


def test_language_features(run, reduced_tensors):
    text = run[0]
    _close(text.hidden, reduced_tensors["lang__hidden"], name="lang hidden")
    _close(text.embedded, reduced_tensors["lang__embedded"], name="lang embedded")


def test_backbone_and_fpn(run, reduced_tensors):
    _, fpn, body, _, _ = run
    for i in range(4):
        _close(body[i], reduced_tensors[f"backbone__body_{i}"], name=f"body {i}")
    for i in range(5):
        _close(fpn[i], reduced_tensors[f"backbone__fpn_{i}"], name=f"fpn {i}")


def test_tower_intermediates(reduced_model, run, reduced_tensors):
    """Every DyHead tower sub-layer (VLFuse, BERT layer, DyConv) against the saved tensors."""
    from glip_ros.model.fusion import BertEncoderLayer, VLFuse

    text, fpn = run[0], run[1]
    head = reduced_model.rpn.head
    visual, hidden = fpn, text.hidden
    with torch.inference_mode():
        for i, layer in enumerate(head.dyhead_tower):
            if isinstance(layer, VLFuse):
                visual, hidden = layer(visual, hidden, text.masks)
                name = f"tower__{i:02d}_VLFuse"
            elif isinstance(layer, BertEncoderLayer):
                hidden = layer(hidden, text.masks)
                name = f"tower__{i:02d}_BertEncoderLayer"
            else:
                visual = layer(visual)
                name = f"tower__{i:02d}_DyConv"
            if f"{name}__lang_hidden" in reduced_tensors:
                _close(hidden, reduced_tensors[f"{name}__lang_hidden"], name=name)
            for j in range(5):
                if f"{name}__visual_{j}" in reduced_tensors:
                    _close(visual[j], reduced_tensors[f"{name}__visual_{j}"], name=f"{name} visual {j}")


def test_head_outputs_and_anchors(run, reduced_tensors):
    out, anchors = run[3], run[4]
    for i in range(5):
        _close(out.logits[i], reduced_tensors[f"head__dot_product_logits_{i}"], name=f"logits {i}")
        _close(out.bbox_reg[i], reduced_tensors[f"head__bbox_reg_{i}"], name=f"bbox_reg {i}")
        _close(out.centerness[i], reduced_tensors[f"head__centerness_{i}"], name=f"centerness {i}")
        _close(anchors[i], reduced_tensors[f"anchors__level_{i}"], atol=0.0, name=f"anchors {i}")
    assert out.cls_width == int(reduced_tensors["head__cls_logits_shape_0"][1])


def _match_sets(boxes, scores, labels, ref_boxes, ref_scores, ref_labels):
    """Detections equal as sets: same (label, score) multiset and each reference box has its twin."""
    assert len(scores) == len(ref_scores)
    np.testing.assert_allclose(np.sort(scores)[::-1], np.sort(ref_scores)[::-1], atol=1e-4)
    used = np.zeros(len(scores), bool)
    for b, s, lab in zip(ref_boxes, ref_scores, ref_labels, strict=False):
        d = np.abs(boxes - b).max(1) + 1e9 * (labels != lab) + 1e9 * used + 1e9 * (np.abs(scores - s) > 1e-4)
        j = int(np.argmin(d))
        assert d[j] <= 1e-2, f"no match for reference box {b} label {lab} (best diff {d[j]:.3g})"
        used[j] = True


def test_final_detections_match(reduced_model, reduced_tensors, fixture_image):
    from glip_ros.detector import GLIPDetector

    det = GLIPDetector(reduced_model)
    dets = det.predict(fixture_image, CAPTION, score_threshold=0, min_size=None)
    boxes = np.array([d.box_xyxy for d in dets])
    scores = np.array([d.score for d in dets])
    labels = np.array([d.phrase_index + 1 for d in dets])
    t = reduced_tensors
    _match_sets(boxes, scores, labels, t["output__boxes_xyxy"], t["output__scores"], t["output__labels"])
    assert {d.phrase for d in dets} <= {"red circle", "blue square", "green triangle"}
    assert all(dets[i].score >= dets[i + 1].score for i in range(len(dets) - 1))
