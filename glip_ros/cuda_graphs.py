"""CUDA graphs for the engine's fixed-shape stages (backbone, fused head).

Why: with a cached query the per-frame work is a few thousand small kernels (Swin windows, five pyramid
levels times six DyHead layers); launched one by one from Python the GPU waits on the CPU. A camera stream
has a fixed frame size and a query keeps its token count, so each stage's shapes repeat frame after frame:
capture the stage once per input signature and replay it.

A replay overwrites the previous outputs of the same graph in place: callers consume them (or copy) before
the next call with the same signature. Any failure to capture is logged once per signature and that
signature runs eagerly from then on (counted in ``counters["fallbacks"]``), so a graph problem costs speed,
never a result.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .model import constants

__all__ = ["GraphCache"]

_log = logging.getLogger(__name__)


class _Captured:
    __slots__ = ("graph", "inputs", "outputs")

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: tuple[torch.Tensor, ...], outputs: Any):
        self.graph = graph
        self.inputs = inputs
        self.outputs = outputs


class GraphCache:
    """Captures ``fn(*inputs)`` once per (name, input shapes/dtypes) and replays it afterwards (the first
    ``capture_after - 1`` calls of a signature run eagerly).

    ``fn`` must be a pure function of its tensor inputs (and of module parameters, which a graph reads in
    place, so weight updates are seen), free of host synchronisation and data-dependent shapes.
    """

    def __init__(self, max_graphs: int = 8, warmup_runs: int = 2, capture_after: int = 2):
        self.max_graphs = max(1, int(max_graphs))
        self.warmup_runs = max(1, int(warmup_runs))
        # A signature is captured on its ``capture_after``-th call: a camera stream repeats its shapes at
        # once, while a folder of images of assorted sizes (evaluation) then runs eagerly instead of paying
        # a capture (and a graph's memory) per size.
        self.capture_after = max(1, int(capture_after))
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._seen: OrderedDict[tuple, int] = OrderedDict()
        self._failed: set[tuple] = set()
        self.counters = {"captures": 0, "replays": 0, "fallbacks": 0, "evictions": 0}
        self._generation = constants.generation()  # of the shape constants the graphs read (constants.py)

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        self._graphs.clear()
        self._seen.clear()
        self._failed.clear()

    def __call__(self, name: str, fn: Callable[..., Any], inputs: Sequence[torch.Tensor]) -> Any:
        inputs = tuple(inputs)
        self._drop_if_constants_dropped()
        key = (name, tuple((tuple(t.shape), t.dtype, str(t.device)) for t in inputs))
        if key in self._failed:
            self.counters["fallbacks"] += 1
            return fn(*inputs)
        entry = self._graphs.get(key)
        if entry is None:
            seen = self._seen.pop(key, 0) + 1
            if seen < self.capture_after:
                self._seen[key] = seen
                while len(self._seen) > 256:
                    self._seen.popitem(last=False)
                return fn(*inputs)
            try:
                entry = self._capture(fn, inputs)
            except Exception as exc:  # noqa: BLE001 - any capture failure means: run this signature eagerly
                self._failed.add(key)
                self.counters["fallbacks"] += 1
                _log.warning(
                    "CUDA graph capture of %s failed (%s: %s); running it eagerly",
                    name,
                    type(exc).__name__,
                    exc,
                )
                if torch.cuda.is_available():
                    torch.cuda.synchronize()  # surface nothing of the failed capture into the eager run
                return fn(*inputs)
            self._drop_if_constants_dropped()  # the warm-up runs may have filled the constants' cache
            self._graphs[key] = entry
            self.counters["captures"] += 1
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
                self.counters["evictions"] += 1
                if self.counters["evictions"] == 1:
                    # Said once: unsaid, a node past that many shapes just gets slower, every return of a
                    # dropped shape paying an eager call and a capture again.
                    _log.warning(
                        "more than %d CUDA graphs needed (one per stage and input shape: frame sizes x query "
                        "lengths x batch sizes): the least recently used is dropped and captured again when "
                        "its shape returns (counted as graph evictions)",
                        self.max_graphs,
                    )
        else:
            self._graphs.move_to_end(key)
        with torch.cuda.device(entry.inputs[0].device):  # a graph replays on the device it was captured on
            for static, new in zip(entry.inputs, inputs, strict=True):
                static.copy_(new)
            entry.graph.replay()
        self.counters["replays"] += 1
        return entry.outputs

    def _drop_if_constants_dropped(self) -> None:
        gen = constants.generation()
        if gen != self._generation:
            self._graphs.clear()
            self._generation = gen

    def _capture(self, fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...]) -> _Captured:
        device = inputs[0].device
        # The engine's device, not the current one (cuda:1 while cuda:0 is current would capture an empty
        # graph: the kernels would go to cuda:1's stream, the capture listen on cuda:0's).
        with torch.cuda.device(device):
            static = tuple(t.clone() for t in inputs)
            # Warm-up on a side stream (cuBLAS/cuDNN handles and workspaces get created outside the capture).
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup_runs):
                    fn(*static)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # Its own capture stream on the device (torch.cuda.graph's default is one stream per process,
            # made on whichever device was current at its first use).
            capture = torch.cuda.Stream(device)
            with torch.cuda.graph(graph, stream=capture, capture_error_mode="thread_local"):
                outputs = fn(*static)
        return _Captured(graph, static, outputs)
