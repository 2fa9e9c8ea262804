"""Low-precision copies of the weights that autocast would cast on every frame.

Why: under autocast every ``nn.Linear`` / ``nn.Conv2d`` (and each deformable convolution's product) casts
its fp32 weight (and bias) to the autocast type on each call. The engine turns autocast's cast cache off (a
CUDA graph capture must not keep pointers into a cache freed after it), and that cache would only last one
frame anyway (and holds leaf tensors only, not the deformable convolutions' reshaped weights): GLIP-T's bf16
frame cast 371 weights, 31 ms of 594 on this project's 2-core CPU, and on a GPU each cast is a kernel of
the replayed graph. Here the copies are made once and swapped in for the duration of a stage; autocast then
finds them already in its type and casts nothing. The values are the ones autocast makes (the same
``.to(dtype)``).

The copies follow the weights: :meth:`KeptCasts.refresh` (called before each frame, outside any graph)
copies a weight changed in place (a checkpoint loaded into the model: new tensor version) into its copy,
in place, so captured CUDA graphs read the new values; when a weight has new storage (the model moved) it
makes new copies and says so, and the engine drops its graphs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .model.dyhead import ModulatedDeformConv

__all__ = ["KeptCasts"]

# Modules whose weights autocast casts to its low-precision type on CPU and CUDA: linear, conv2d, and the
# deformable convolution's matrix product (dyhead.ModulatedDeformConv, whose reshaped weight autocast would
# cast on every call).
_CAST_MODULES = (nn.Linear, nn.Conv2d, ModulatedDeformConv)


class KeptCasts:
    """Kept ``dtype`` copies of the weights and biases of the Linear, Conv2d and deformable convolution layers
    under ``roots``.

    Use only where those layers run under autocast to ``dtype`` (their inputs are cast anyway): inside
    :meth:`applied` the layers see the copies, so a layer run outside autocast there would get mixed types.
    Not thread-safe over a shared model: the engine runs one frame at a time."""

    def __init__(self, roots: Sequence[nn.Module], dtype: torch.dtype):
        self.dtype = dtype
        self._slots: list[tuple[nn.Module, str]] = []
        seen: set[int] = set()
        for root in roots:
            for module in root.modules():
                if isinstance(module, _CAST_MODULES) and id(module) not in seen:
                    seen.add(id(module))
                    for name in ("weight", "bias"):
                        p = module._parameters.get(name)
                        if p is not None and p.is_floating_point():
                            self._slots.append((module, name))
        self._originals: list[torch.Tensor] = []
        self._copies: list[torch.Tensor] = []
        self._stamps: list[tuple] = []

    def __len__(self) -> int:
        return len(self._slots)

    def refresh(self) -> bool:
        """Bring the copies up to date with the weights. True when copies were (re)made with new storage,
        which CUDA graphs captured before cannot see (the caller drops them); changed values are copied in
        place (False)."""
        current = [m._parameters[name] for m, name in self._slots]
        # (storage, version): a move or a new tensor changes the storage; an in-place change the version
        stamps = [(p.data_ptr(), p._version) for p in current]
        if self._copies and stamps == self._stamps:
            self._originals = current
            return False
        in_place = bool(self._copies) and all(
            s[0] == old[0] and p.shape == c.shape
            for s, old, p, c in zip(stamps, self._stamps, current, self._copies, strict=True)
        )
        # Normal tensors, not inference tensors (the engine refreshes under inference mode): they keep a
        # version counter, which the deformable convolutions' kept reordered weights key on.
        with torch.inference_mode(False), torch.no_grad():
            if in_place:
                for p, copy, s, old in zip(current, self._copies, stamps, self._stamps, strict=True):
                    if s != old:
                        copy.copy_(p)
            else:
                self._copies = [p.detach().to(self.dtype, copy=True) for p in current]
        self._originals = current
        self._stamps = stamps
        return not in_place

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The layers use the copies inside the block (after a :meth:`refresh`), their own weights after."""
        if not self._copies:
            self.refresh()
        for (module, name), copy in zip(self._slots, self._copies, strict=True):
            module._parameters[name] = copy
        try:
            yield
        finally:
            for (module, name), original in zip(self._slots, self._originals, strict=True):
                module._parameters[name] = original
