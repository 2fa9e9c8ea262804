"""Model configurations owned by training: the embedded default model's architecture.

``glip_synth_tiny`` is GLIP's architecture (Swin-Det + FPN P3-P7, BERT, early-fusion VL-DyHead, ATSS) scaled
down so it trains in minutes on 2 CPU cores and fits the repository (≈4 M parameters, ≈8 MB in fp16).
Deformable convolution is off in this preset: its CPU backward is ~2x the rest of the step, and the scenes
have no perspective to model. Anchors are half the official size (4x stride) because the objects of the
generated scenes are 16-72 px at the model's 256-px input.
"""

from __future__ import annotations

from typing import Any

from glip_ros.model import GLIPConfig, get_preset

__all__ = ["glip_synth_tiny", "TRAIN_PRESETS", "resolve_train_model"]


def glip_synth_tiny() -> GLIPConfig:
    """The embedded model's architecture (a model preset too: build_model("glip_synth_tiny"))."""
    return get_preset("glip_synth_tiny")


TRAIN_PRESETS = {"glip_synth_tiny": glip_synth_tiny}


def resolve_train_model(spec: Any) -> Any:
    """Our presets by name; anything else goes to the model package's resolver unchanged."""
    if isinstance(spec, str) and spec in TRAIN_PRESETS:
        return TRAIN_PRESETS[spec]()
    return spec
