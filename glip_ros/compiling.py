"""Opt-in ``torch.compile`` of the modules that run on every frame.

Why: with a cached query, most of a GPU frame is element-wise passes over 22k locations x 256 channels
(GroupNorm, DyReLU, the scale-aware mean, the modulation and casts around the deformable convolutions'
bilinear sampling), each of which reads and writes the whole activation. Inductor fuses them into a few
kernels, and samples, modulates and casts the deformable convolutions' columns in one pass. The matrix
products stay on cuBLAS. Off by default: on an H100 it made GLIP-T frames about 20% faster (30.6 -> 25.1 ms,
docs/BENCHMARKS.md), but the first frame compiled for 73-108 s there, which a long-running stream amortises
and a node restarted often does not.

On a CPU the compiled head uses the gathered deformable convolution (``dyhead.ModulatedDeformConv``'s
"auto"): compiled, GLIP-T's head at 480x640 on 2 cores took 568-572 ms against 593-598 eager, after 32-48 s
of compilation (5 s with inductor's on-disk cache warm, i.e. a restart with the same code and shapes);
the compiled sampled form was slower than eager there (835 ms).

Each DyHead tower layer (and optionally the backbone) is compiled as its own graph; the six layers of a
tower share one compiled graph (same code, parameters passed as inputs). Shapes follow torch's automatic
dynamic rule: the first graph is specialised to its shapes, and the first change of a shape (a query of
another token count, a camera of another size) compiles one shape-generic graph that serves every later
one, so a robot changing queries pays a compilation twice per module, not once per query length
(measured on this CPU with glip_tiny_test: a second token count recompiled in 9 s, every later one in 0 s;
with static shapes each new count recompiled, 7 s each). CUDA graphs (``cuda_graphs.py``) capture the
compiled kernels like any others. A compilation or compiled-run failure puts every module back to eager for
good (logged once, counted by the engine): speed is lost, never a result.

The modules are compiled in place (their ``forward``): an engine sharing the same model object runs them
compiled too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["COMPILE_SCOPES", "CompiledModules"]

_log = logging.getLogger(__name__)

COMPILE_SCOPES = ("off", "head", "all")


class CompiledModules:
    """Wraps the per-frame modules of a GLIP model in ``torch.compile`` and can undo it.

    ``scope``: "off", "head" (every layer of the fusion + DyHead tower) or "all" (the tower and the image
    backbone, Swin + FPN)."""

    def __init__(self, model: nn.Module, scope: str):
        if scope not in COMPILE_SCOPES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_SCOPES)}, got {scope!r}")
        self.scope = scope
        self.modules: list[nn.Module] = []
        if scope == "off":
            return
        self.modules.extend(model.rpn.head.dyhead_tower)
        if scope == "all":
            self.modules.append(model.backbone)
        # Guards that fail (another dtype, autocast state, batch of chunks) add graphs; the default limit
        # (8) would silently send a module's ninth to eager.
        dynamo = torch._dynamo.config
        dynamo.cache_size_limit = max(dynamo.cache_size_limit, 64)
        for m in self.modules:
            # An instance attribute shadows the class's forward; deleting it restores eager (revert()).
            m.forward = torch.compile(m.forward)

    @property
    def active(self) -> bool:
        return bool(self.modules)

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Eager modules inside the block (the benchmark's official-style path and eager reference)."""
        saved = [(m, m.__dict__.pop("forward", None)) for m in self.modules]
        try:
            yield
        finally:
            for m, fwd in saved:
                if fwd is not None:
                    m.forward = fwd

    def revert(self, reason: BaseException) -> None:
        """Run every module eagerly from now on."""
        if not self.modules:
            return
        _log.warning(
            "torch.compile failed (%s: %s); the model runs eagerly from now on",
            type(reason).__name__,
            str(reason).splitlines()[0] if str(reason) else "",
        )
        for m in self.modules:
            if "forward" in m.__dict__:
                del m.forward
        self.modules = []
        self.scope = "off"
