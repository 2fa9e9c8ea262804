"""Kept low-precision weight copies (glip_ros/kept_casts.py): the same numbers as autocast's own casts, the
model's weights restored after each stage, and weights changed in place or moved followed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from glip_ros.engine import GroundingEngine
from glip_ros.kept_casts import KeptCasts
from glip_ros.model import build_model

FRAMES = [np.random.default_rng(i).integers(0, 255, (120, 160, 3), dtype=np.uint8) for i in range(2)]


def _engine(preset: str, head: str) -> GroundingEngine:
    torch.manual_seed(0)
    cfg = build_model(preset).config
    cfg.head.pre_nms_thresh = 0.0  # random weights: every pair a candidate
    return GroundingEngine(
        build_model(cfg), precision="bf16", head_precision=head, min_size=None, max_size=None
    )


def _candidates(eng: GroundingEngine, text: str = "red circle. blue square"):
    return eng.candidates(FRAMES, eng.prepare_query(text), None, None)[0]


def _same(a, b) -> bool:
    return all(
        torch.equal(x.scores, y.scores) and torch.equal(x.boxes, y.boxes) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("preset", ["glip_tiny_test", "glip_tiny_test_a"])
@pytest.mark.parametrize("head", ["auto", "fp32"])
def test_kept_copies_give_what_autocast_gives_and_the_weights_come_back(preset, head):
    eng = _engine(preset, head)
    assert eng._kept_casts["backbone"] is not None
    assert (eng._kept_casts["head"] is not None) == (head == "auto")
    kept = _candidates(eng)
    params = dict(eng.model.named_parameters())
    assert all(isinstance(p, nn.Parameter) and p.dtype == torch.float32 for p in params.values())
    saved, eng._kept_casts = eng._kept_casts, {"backbone": None, "head": None}
    plain = _candidates(eng)  # autocast casting every weight itself
    eng._kept_casts = saved
    assert _same(kept, plain)


def test_fp32_engine_keeps_nothing():
    eng = GroundingEngine(build_model("glip_tiny_test"), precision="fp32", head_precision="auto")
    assert eng._kept_casts == {"backbone": None, "head": None}


def test_weights_loaded_in_place_reach_the_copies():
    """A checkpoint loaded into the engine's model (in place) changes the next frame exactly as it changes a
    fresh engine's; the copies were updated in place (captured graphs keep reading them)."""
    eng = _engine("glip_tiny_test", "auto")
    before = _candidates(eng)
    copies = list(eng._kept_casts["backbone"]._copies)
    torch.manual_seed(1)
    state = {
        k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in eng.model.state_dict().items()
    }
    eng.model.load_state_dict(state)
    eng.clear_cache()  # the language weights changed too: the cached text is stale
    after = _candidates(eng)
    assert not _same(after, before)
    assert all(a is b for a, b in zip(eng._kept_casts["backbone"]._copies, copies, strict=True))
    fresh = GroundingEngine(eng.model, precision="bf16", head_precision="auto", min_size=None, max_size=None)
    assert _same(after, _candidates(fresh))


def test_moved_weights_make_new_copies_and_a_failing_stage_restores_the_weights():
    layer = nn.Sequential(nn.Linear(4, 3), nn.Conv2d(3, 2, 1), nn.LayerNorm(2))
    kept = KeptCasts([layer], torch.bfloat16)
    assert len(kept) == 4  # Linear and Conv2d weights and biases; LayerNorm is not cast by autocast
    assert kept.refresh() is True and kept.refresh() is False
    first = list(kept._copies)
    with torch.no_grad():
        layer[0].weight.mul_(2)
    assert kept.refresh() is False and kept._copies[0] is first[0]
    assert torch.equal(kept._copies[0], layer[0].weight.detach().bfloat16())
    layer[0].weight = nn.Parameter(layer[0].weight.detach().clone())  # new storage, as after .to(device)
    assert kept.refresh() is True and kept._copies[0] is not first[0]
    original = layer[0].weight
    with pytest.raises(RuntimeError, match="boom"):
        with kept.applied():
            assert layer[0].weight.dtype == torch.bfloat16
            raise RuntimeError("boom")
    assert layer[0].weight is original
