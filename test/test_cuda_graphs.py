"""CUDA graphs in the engine: replays give what the eager engine gives (needs a GPU: ``-m gpu``).

On machines without CUDA the engine never builds graphs; that part is checked here without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glip_ros.engine import GroundingEngine
from glip_ros.model import build_model

FRAMES = [np.random.default_rng(i).integers(0, 255, (120, 160, 3), dtype=np.uint8) for i in range(2)]


def test_no_graphs_without_cuda():
    eng = GroundingEngine(build_model("glip_tiny_test"), device="cpu", cuda_graphs=True)
    assert eng.graphs is None


def test_head_precision_is_checked():
    with pytest.raises(ValueError, match="head_precision"):
        GroundingEngine(build_model("glip_tiny_test"), head_precision="fp8")


def test_graph_cache_runs_eagerly_before_capture_and_after_a_failed_one():
    """Bookkeeping without a GPU: the first calls of a signature run eagerly; a capture that fails (here:
    CPU tensors) is counted, and that signature stays eager without trying again."""
    from glip_ros.cuda_graphs import GraphCache

    cache = GraphCache(capture_after=2)
    calls = []

    def fn(x):
        calls.append(1)
        return x * 2

    x = torch.ones(3)
    assert torch.equal(cache("f", fn, (x,)), x * 2)
    assert cache.counters == {"captures": 0, "replays": 0, "fallbacks": 0, "evictions": 0}
    assert torch.equal(cache("f", fn, (x,)), x * 2)  # capture attempt fails on CPU -> eager
    assert torch.equal(cache("f", fn, (x,)), x * 2)  # remembered as failed: eager, no new attempt
    assert cache.counters["fallbacks"] == 2 and cache.counters["captures"] == 0 and len(cache) == 0


def test_graph_cache_counts_and_reports_the_graphs_it_drops(monkeypatch, caplog):
    """Bookkeeping without a GPU (the capture and the device switch replaced): past ``max_graphs`` shapes the
    least recently used graph goes, each drop is counted, and the first one says why in the log."""
    import contextlib
    import logging

    from glip_ros import cuda_graphs

    cache = cuda_graphs.GraphCache(max_graphs=2, capture_after=1)
    monkeypatch.setattr(
        cache, "_capture", lambda fn, inputs: cuda_graphs._Captured(_NoGraph(), inputs, fn(*inputs))
    )
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    with caplog.at_level(logging.WARNING, logger=cuda_graphs.__name__):
        for n in (1, 2, 1, 3, 2):  # 3 drops 2 (1 was used since), then 2 drops 1
            cache("f", lambda x: x * 2, (torch.ones(n),))
    assert cache.counters["captures"] == 4 and cache.counters["evictions"] == 2 and len(cache) == 2
    assert caplog.text.count("more than 2 CUDA graphs needed") == 1


class _NoGraph:
    def replay(self) -> None:
        pass


@pytest.mark.parametrize("preset", ["glip_tiny_test", "glip_tiny_test_a"])
def test_graphed_stages_are_capturable(preset):
    """A CUDA graph capture cannot copy from host memory nor let the host read a device value: a Python list
    used as an index, torch.tensor() of Python numbers, .item() or a data-dependent shape inside the
    backbone or head would make every capture fall back to eager. Checked on CPU at the dispatcher, on every
    call of the graphed stages; fp32 only (a dispatch mode sits below autocast, which then does not cast)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    # Tensors from host data, and reads of device values by the host (item(), bool(), data-dependent shapes):
    # both are illegal while a CUDA graph is captured.
    forbidden = {
        aten.lift_fresh.default,
        aten._local_scalar_dense.default,
        aten.nonzero.default,
        aten.masked_select.default,
    }

    class HostData(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in forbidden:
                self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    eng = GroundingEngine(build_model(preset), min_size=None)
    seen = HostData()
    run_stage = eng._run_stage

    def recorded(name, fn, inputs):
        with seen:
            return run_stage(name, fn, inputs)

    eng._run_stage = recorded
    for text in ("red circle. blue square", [f"thing{i}" for i in range(150)]):
        q = eng.prepare_query(text)
        for _ in range(2):
            eng.detect(FRAMES, q, score_threshold=0.0)
    assert seen.ops == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("preset", ["glip_tiny_test", "glip_tiny_test_a"])
@pytest.mark.parametrize("precision,head", [("fp32", "fp32"), ("bf16", "tf32"), ("bf16", "auto")])
def test_graphed_equals_eager(preset, precision, head):
    torch.manual_seed(0)
    cfg = build_model(preset).config
    cfg.head.pre_nms_thresh = 0.0  # random weights: every pair a candidate, so there is something to compare
    model = build_model(cfg)
    kw = dict(device="cuda", precision=precision, head_precision=head, min_size=None, max_size=None)
    graphed = GroundingEngine(model, cuda_graphs=True, **kw)
    eager = GroundingEngine(model, cuda_graphs=False, **kw)
    for text in ("red circle. blue square", [f"thing{i}" for i in range(150)]):
        qg, qe = graphed.prepare_query(text), eager.prepare_query(text)
        for _ in range(3):  # capture, then replays
            got = graphed.detect(FRAMES, qg, score_threshold=0.0)
        want = eager.detect(FRAMES, qe, score_threshold=0.0)
        for g, w in zip(got, want, strict=True):
            assert g and [d.phrase_index for d in g] == [d.phrase_index for d in w]
            np.testing.assert_allclose([d.score for d in g], [d.score for d in w], atol=1e-5)
    assert graphed.counters["graph_captures"] > 0 and graphed.counters["graph_fallbacks"] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graph_replays_follow_weights_changed_in_place():
    """The kept bf16 weight copies (kept_casts.py) are updated in place before the frame, and the gathered
    deformable convolution's kept reordered weight is made in the graph during a capture: weights changed
    in place reach the replays."""
    from glip_ros.model.dyhead import ModulatedDeformConv

    torch.manual_seed(0)
    cfg = build_model("glip_tiny_test").config
    cfg.head.pre_nms_thresh = 0.0
    model = build_model(cfg)
    kw = dict(device="cuda", precision="bf16", head_precision="auto", min_size=None, max_size=None)
    graphed = GroundingEngine(model, cuda_graphs=True, **kw)
    q = graphed.prepare_query("red circle. blue square")
    for _ in range(3):  # capture, then replays
        before = graphed.detect(FRAMES, q, score_threshold=0.0)
    assert graphed.counters["graph_captures"] > 0
    with torch.no_grad():
        for root in (model.backbone, model.rpn.head):  # not the language model: the query's text is cached
            for m in root.modules():
                if isinstance(m, (ModulatedDeformConv, torch.nn.Linear, torch.nn.Conv2d)):
                    m.weight.mul_(1.5)
    got = graphed.detect(FRAMES, q, score_threshold=0.0)
    eager = GroundingEngine(model, cuda_graphs=False, **kw)
    want = eager.detect(FRAMES, eager.prepare_query("red circle. blue square"), score_threshold=0.0)
    for g, w, b in zip(got, want, before, strict=True):
        assert [d.score for d in g] != [d.score for d in b]
        np.testing.assert_allclose([d.score for d in g], [d.score for d in w], atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphs_are_recaptured_when_the_kept_constants_are_dropped():
    """Captured graphs read the kept sampling grids and masks by address: once the cache drops them (full,
    or cleared) the graphs are dropped too, and replays after that still equal eager runs."""
    from glip_ros.model.constants import clear_shape_constants

    torch.manual_seed(0)
    cfg = build_model("glip_tiny_test").config
    cfg.head.pre_nms_thresh = 0.0
    model = build_model(cfg)
    kw = dict(device="cuda", precision="fp32", min_size=None, max_size=None)
    graphed = GroundingEngine(model, cuda_graphs=True, **kw)
    eager = GroundingEngine(model, cuda_graphs=False, **kw)
    qg, qe = graphed.prepare_query("red circle. blue square"), eager.prepare_query("red circle. blue square")
    for _ in range(3):
        graphed.detect(FRAMES, qg, score_threshold=0.0)
    captures = graphed.counters["graph_captures"]
    clear_shape_constants()
    torch.cuda.empty_cache()  # let the freed constants' memory be reused
    junk = torch.full((1 << 22,), 7.0, device="cuda")  # overwrite it
    for _ in range(3):
        got = graphed.detect(FRAMES, qg, score_threshold=0.0)
    del junk
    want = eager.detect(FRAMES, qe, score_threshold=0.0)
    assert graphed.counters["graph_captures"] > captures
    for g, w in zip(got, want, strict=True):
        assert g and [d.phrase_index for d in g] == [d.phrase_index for d in w]
        np.testing.assert_allclose([d.score for d in g], [d.score for d in w], atol=1e-5)
