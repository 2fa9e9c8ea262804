"""Loss terms on hand-computed cases and ATSS assignment on a known layout."""

from __future__ import annotations

import math

import pytest
import torch

from glip_ros.train.losses import (
    atss_assign,
    box_iou_plus1,
    centerness_targets,
    giou_loss,
    token_sigmoid_focal_loss,
)


def test_token_focal_loss_hand_computed() -> None:
    logits = torch.tensor([[[0.0, 2.0, 50.0]]])  # [B=1, N=1, T=3]
    targets = torch.tensor([[[1.0, 0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding: its huge logit must not count
    # token 0: p = 0.5, t = 1 -> alpha * (1 - 0.5)^2 * ln 2
    l0 = 0.25 * 0.25 * math.log(2)
    # token 1: p = sigmoid(2), t = 0 -> (1 - alpha) * p^2 * -ln(1 - p)
    p = 1 / (1 + math.exp(-2))
    l1 = 0.75 * p**2 * -math.log(1 - p)
    got = token_sigmoid_focal_loss(logits, targets, mask)
    assert float(got) == pytest.approx(l0 + l1, rel=1e-6)


def test_giou_loss_hand_computed() -> None:
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert float(giou_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    # disjoint unit squares 1 apart: IoU 0, union 2, enclosing 3 -> GIoU = -1/3, loss 4/3
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert float(giou_loss(a, b)) == pytest.approx(4 / 3, rel=1e-6)
    # half overlap: inter 0.5, union 1.5, enclosing 1.5 -> GIoU 1/3; weight 0.5 -> 1/3
    c = torch.tensor([[0.5, 0.0, 1.5, 1.0]])
    assert float(giou_loss(a, c, torch.tensor([0.5]))) == pytest.approx(0.5 * (1 - 1 / 3), rel=1e-6)


def test_centerness_and_iou_conventions() -> None:
    gt = torch.tensor([[0.0, 0.0, 40.0, 20.0], [0.0, 0.0, 40.0, 20.0]])
    anchors = torch.tensor([[10.0, 0.0, 30.0, 20.0], [0.0, 0.0, 20.0, 20.0]])  # centres (20,10) and (10,10)
    c = centerness_targets(anchors, gt)
    assert c[0] == pytest.approx(1.0)
    assert c[1] == pytest.approx(math.sqrt(10 / 30))
    # +1 convention: [0,0,9,9] has area 100, [0,0,4,9] area 50
    iou = box_iou_plus1(torch.tensor([[0.0, 0, 9, 9]]), torch.tensor([[0.0, 0, 4, 9]]))
    assert float(iou) == pytest.approx(0.5)


def test_atss_known_layout() -> None:
    # level 0: 3x3 anchors of 10 px (+1 convention: [x, y, x+9, y+9]); level 1: one 30 px anchor.
    lvl0 = torch.tensor(
        [[10.0 * i, 10.0 * j, 10.0 * i + 9, 10.0 * j + 9] for j in range(3) for i in range(3)]
    )
    lvl1 = torch.tensor([[0.0, 0.0, 29.0, 29.0]])
    gt = torch.tensor([[0.0, 0.0, 19.0, 19.0], [20.0, 20.0, 29.0, 29.0]])
    matched, _ = atss_assign([lvl0, lvl1], gt, topk=9)
    # GT 0: candidate IoUs are 0.25 (x4), 0 (x5) and 0.444 (the level-1 anchor); mean+std ~ 0.31, so only the
    # level-1 anchor is positive. GT 1 equals level-0 anchor 8 (IoU 1), far above its mean+std.
    expected = torch.full((10,), -1, dtype=torch.long)
    expected[8] = 1
    expected[9] = 0
    assert torch.equal(matched, expected)
    # the threshold really is mean + std (unbiased) of the candidates
    ious = box_iou_plus1(torch.cat([lvl0, lvl1]), gt[:1])[:, 0]
    thr = ious.mean() + ious.std()
    assert 0.25 < float(thr) < 0.444


def test_atss_centre_must_be_inside_and_no_gt() -> None:
    anchors = [torch.tensor([[0.0, 0.0, 99.0, 99.0]])]
    # a GT whose box does not contain the (only) anchor's centre (49.5, 49.5): never positive
    matched, _ = atss_assign(anchors, torch.tensor([[0.0, 0.0, 40.0, 40.0]]))
    assert matched.tolist() == [-1]
    matched, _ = atss_assign(anchors, torch.zeros((0, 4)))
    assert matched.tolist() == [-1]
