"""GLIPDetector: the small user-facing API (one image, one query) on top of the engine."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .engine import GroundingEngine
from .model import GLIPModel
from .postprocess import Detection

__all__ = ["GLIPDetector", "Detection"]


class GLIPDetector:
    def __init__(self, model: GLIPModel, device: str = "cpu", precision: str = "fp32", **engine_kwargs):
        self.engine = GroundingEngine(model, device=device, precision=precision, **engine_kwargs)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | None = None,
        preset: str | None = None,
        config: str | None = None,
        bert_config: str | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        **engine_kwargs,
    ) -> GLIPDetector:
        det = cls.__new__(cls)
        det.engine = GroundingEngine.from_checkpoint(
            path,
            preset=preset,
            config=config,
            bert_config=bert_config,
            device=device,
            precision=precision,
            **engine_kwargs,
        )
        return det

    @property
    def model(self) -> GLIPModel:
        return self.engine.model

    def predict(
        self,
        image: np.ndarray,
        query,
        score_threshold: float = 0.5,
        min_size: int | None = -1,
        max_size: int | None = -1,
        phrases: Sequence | None = None,
    ) -> list[Detection]:
        """Detections (original pixels, sorted by score) of ``query`` in an RGB uint8 image.

        ``query``: "phrase. phrase, phrase", a list of phrases, or a sentence with ``phrases`` to ground.
        ``min_size``/``max_size`` -1 (default) are the model's own test sizes (800/1333 for the official
        presets, 256/448 for the embedded model); ``min_size=None`` runs the image at its own size.
        Grayscale is replicated to RGB and alpha dropped.
        """
        q = self.engine.prepare_query(query, phrases=phrases)
        return self.engine.detect(
            [image], q, score_threshold=score_threshold, min_size=min_size, max_size=max_size
        )[0]
