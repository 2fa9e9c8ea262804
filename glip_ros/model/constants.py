"""Tensors that depend only on shapes (sampling grids, attention masks), built once per shape and kept.

Why: rebuilding them every frame costs a dozen small operators each (on a GPU, each a kernel launch or a
CUDA-graph node; hundreds per frame). They are made outside inference mode (an inference tensor kept here
would break a later training step of the same shape: "inference tensors cannot be saved for backward"),
and not kept while a CUDA graph is captured (the tensor would live in the graph's memory pool) nor looked
up while torch.compile traces (a guard on the cache would recompile as it grows; constants are folded
there anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

import torch

__all__ = ["shape_constant", "clear_shape_constants", "generation", "is_compiling"]

T = TypeVar("T")
_MAX = 256
_CACHE: dict[Hashable, object] = {}
# Bumped whenever a cache here drops its tensors: a CUDA graph captured before reads them by address (it
# holds no reference), so cuda_graphs.GraphCache drops the graphs captured before a bump.
_generation = 0
# torch.compiler.is_compiling is torch >= 2.3; torch._dynamo's is older. Both read as True while traced.
is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling


def shape_constant(
    key: Hashable, device: torch.device, make: Callable[[], T], store: dict[Hashable, object] | None = None
) -> T:
    """``make()``'s result for ``key`` (which must name everything it depends on, device included), kept in
    ``store`` (a module's own, for values that also depend on its state) or in the process-wide cache."""
    if is_compiling():
        return make()
    cache = _CACHE if store is None else store
    hit = cache.get(key)
    if hit is not None:
        return hit  # type: ignore[return-value]
    with torch.inference_mode(False):
        value = make()
    if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        if len(cache) >= _MAX:
            cache.clear()
            _bump()
        cache[key] = value
    return value


def generation() -> int:
    """Changes whenever kept constants were dropped (graphs that read them must be captured anew)."""
    return _generation


def _bump() -> None:
    global _generation
    _generation += 1


def clear_shape_constants() -> None:
    _CACHE.clear()
    _bump()
