"""GroundingEngine: counted (not timed) caching and sharing, batching and chunking equivalences, bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glip_ros.engine import GroundingEngine
from glip_ros.model import build_model

RNG = np.random.default_rng(0)
FRAMES = [RNG.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(3)]


@pytest.fixture(scope="module", params=["fusion", "no_fusion"])
def engine(request):
    torch.manual_seed(0)
    cfg = build_model("glip_tiny_test").config
    cfg.head.early_fusion = request.param == "fusion"
    # Random weights score every (location, phrase) pair near the 0.01 prior, below the official 0.05
    # candidate threshold: take every pair as a candidate so the equivalences below compare real detections.
    cfg.head.pre_nms_thresh = 0.0
    return GroundingEngine(build_model(cfg), min_size=None, max_size=None)


def _key(dets):
    return [(d.phrase_index, round(d.score, 5), tuple(round(v, 3) for v in d.box_xyxy)) for d in dets]


def test_text_encoded_once_per_query(engine):
    q = engine.prepare_query("red circle. blue square")
    before = dict(engine.counters)
    for _ in range(3):
        engine.detect(FRAMES[:1], q, score_threshold=0.0)
    assert engine.counters["text_encodes"] == before["text_encodes"]  # zero language-backbone calls per frame
    assert engine.counters["image_forwards"] == before["image_forwards"] + 3
    engine.prepare_query("red circle. blue square")
    assert engine.counters["text_encodes"] == before["text_encodes"]  # cache hit on the same query
    assert engine.counters["text_cache_hits"] > before["text_cache_hits"]


def test_lvis_sized_query_runs_backbone_once_per_frame(engine):
    from glip_ros.bench import lvis_sized_phrases

    q = engine.prepare_query(". ".join(lvis_sized_phrases(1203)))
    assert q.num_chunks > 1 and len(q.phrases) == 1203
    before = dict(engine.counters)
    dets = engine.detect(FRAMES[:1], q, score_threshold=0.0)[0]
    assert engine.counters["image_forwards"] == before["image_forwards"] + 1
    assert engine.counters["text_encodes"] == before["text_encodes"]
    assert dets and all(0 <= d.phrase_index < 1203 for d in dets)
    assert len({d.phrase_index for d in dets}) > 1


def test_batched_equals_sequential_for_three_cameras(engine):
    q = engine.prepare_query("red circle. blue square. green triangle")
    batched = engine.detect(FRAMES, q, score_threshold=0.0)
    sequential = [engine.detect([f], q, score_threshold=0.0)[0] for f in FRAMES]
    for b, s in zip(batched, sequential, strict=True):
        assert b and len(b) == len(s)
        np.testing.assert_allclose([d.score for d in b], [d.score for d in s], atol=1e-5)
        np.testing.assert_allclose([d.box_xyxy for d in b], [d.box_xyxy for d in s], atol=1e-3)


@pytest.mark.parametrize("backbone_batch", [0, 2])
def test_backbone_batch_splits_calls_not_results(engine, backbone_batch):
    """Swin + FPN over all frames at once (0, the GPU default) or two at a time gives what one at a time
    (the CPU default) gives; the head takes the whole batch either way."""
    q = engine.prepare_query("red circle. blue square. green triangle")
    default = engine.backbone_batch
    want = engine.detect(FRAMES, q, score_threshold=0.0)
    engine.backbone_batch = backbone_batch
    try:
        before = engine.counters["image_forwards"]
        got = engine.detect(FRAMES, q, score_threshold=0.0)
        calls = engine.counters["image_forwards"] - before
    finally:
        engine.backbone_batch = default
    assert default == 1 and calls == (1 if backbone_batch == 0 else 2)
    for g, w in zip(got, want, strict=True):
        assert g and len(g) == len(w)
        np.testing.assert_allclose([d.score for d in g], [d.score for d in w], atol=1e-5)
        np.testing.assert_allclose([d.box_xyxy for d in g], [d.box_xyxy for d in w], atol=1e-3)


def test_chunked_and_unchunked_agree_when_the_query_fits(engine):
    from glip_ros.prompt import build_prompt, build_prompts

    text = "red circle. blue square. green triangle"
    # The chunker leaves a query that fits as the one unchunked prompt ...
    (chunk,) = build_prompts(text)
    whole = build_prompt(text)
    assert torch.equal(chunk.input_ids, whole.input_ids) and chunk.phrases == whole.phrases
    # ... and several chunks batched through the head (padded to the longest, masked) give what each chunk
    # gives through the head alone.
    q = engine.prepare_query([f"thing{i}" for i in range(120)] + ["red circle", "blue square"])
    assert q.num_chunks > 1
    saved = engine.max_chunk_batch
    try:
        engine.max_chunk_batch = 1
        alone = engine.detect(FRAMES[:1], q, score_threshold=0.0)[0]
        engine.max_chunk_batch = 8
        batched = engine.detect(FRAMES[:1], q, score_threshold=0.0)[0]
    finally:
        engine.max_chunk_batch = saved
    assert alone and [d.phrase_index for d in alone] == [d.phrase_index for d in batched]
    np.testing.assert_allclose([d.score for d in alone], [d.score for d in batched], atol=1e-5)
    np.testing.assert_allclose([d.box_xyxy for d in alone], [d.box_xyxy for d in batched], atol=1e-3)


def test_fp32_vs_bf16_on_the_parity_fixture(reduced_model, fixture_image):
    """Top-20 detections of fp32 and bf16 match (IoU >= 0.9, |score diff| <= 0.05)."""
    from glip_ros.bench import compare_top

    q_text = "red circle. blue square. green triangle."
    e32 = GroundingEngine(reduced_model, precision="fp32", min_size=None)
    ebf = GroundingEngine(reduced_model, precision="bf16", min_size=None)
    d32 = e32.detect([fixture_image], e32.prepare_query(q_text), score_threshold=0.0)[0]
    dbf = ebf.detect([fixture_image], ebf.prepare_query(q_text), score_threshold=0.0)[0]
    m = compare_top(d32, dbf, k=20)
    assert m["top"] == 20 and m["matched"] == 20, m


def test_bf16_location_bound_is_exact_without_early_fusion():
    """The bf16 product with a proven margin only decides where exact fp32 logits are computed: detections
    are identical with it on or off, and it does skip locations (here: some, not all)."""
    from glip_ros.bench import lvis_sized_phrases

    torch.manual_seed(0)
    cfg = build_model("glip_tiny_test_a").config
    cfg.head.pre_nms_thresh = 0.3
    model = build_model(cfg)
    with torch.no_grad():
        model.rpn.head.bias0.fill_(-1.0)  # token probabilities spread around the threshold
    eng = GroundingEngine(model, min_size=None, max_size=None)
    q = eng.prepare_query(lvis_sized_phrases(300))
    assert q.num_chunks > 1
    pruned = eng.detect(FRAMES[:2], q, score_threshold=0.0)
    total, exact = eng.counters["alignment_locations"], eng.counters["alignment_locations_exact"]
    assert 0 < exact < total
    eng.bf16_prune = False
    full = eng.detect(FRAMES[:2], q, score_threshold=0.0)
    for a, b in zip(pruned, full, strict=True):
        assert a and _key(a) == _key(b)


def test_bound_peaks_from_int16_patterns_are_the_bf16_peaks_or_inf():
    """The location bound's CPU peaks (one int16 reduction of the negated logits): where every logit of a row
    is negative, bitwise the bf16 amax; where one is >= 0 (+0.0 included), +inf (the location is kept). Rows
    of both kinds, -0.0, -inf, a strided slice as the bound takes it."""
    from glip_ros.engine import bound_peaks

    torch.manual_seed(0)
    logits = torch.randn(300, 4 * 40).bfloat16()
    logits[::3] -= 6.0  # rows where (nearly) every logit is negative
    logits[::7] = -logits[::7].abs() - 0.01  # every logit negative
    logits[::5, :6] = -0.0
    logits[1::5] = -0.0  # a row of -0.0: its peak is -0.0, negative as a pattern, not >= +0.0
    logits[2::11] = float("-inf")
    logits[4::17, 2] = float("-inf")
    logits[6::19, 30] = 0.0
    view = logits.view(-1, 4, 40)[:, :, 1:37]
    got, peak = bound_peaks(view.neg()), view.amax(dim=-1).float()
    assert got.dtype == torch.float32 and got.shape == peak.shape == (300, 4)
    negative = (view.view(torch.int16) < 0).all(dim=-1)  # every pattern has its sign bit: logit < 0 or -0.0
    assert negative.any() and not negative.all()
    assert torch.equal(got[negative], peak[negative])
    assert torch.isinf(got[~negative]).all() and (got[~negative] > 0).all()
