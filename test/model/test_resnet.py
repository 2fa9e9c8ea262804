"""The ResNet backbone option (the paper's other backbone) builds, saves, reloads and detects."""

from __future__ import annotations

import numpy as np
import torch

from glip_ros.detector import GLIPDetector
from glip_ros.model import build_model, get_preset, save_checkpoint


def test_resnet_glip_round_trip(tmp_path):
    cfg = get_preset("glip_tiny_test")
    cfg.name = "glip_tiny_resnet"
    cfg.backbone = "resnet"
    cfg.resnet.depth = 18
    torch.manual_seed(0)
    model = build_model(cfg)
    assert any(k.startswith("backbone.body.layer4.") for k in model.state_dict())
    path = str(tmp_path / "r18.safetensors")
    save_checkpoint(model, path)
    det = GLIPDetector.from_checkpoint(path)
    assert det.model.config.backbone == "resnet"
    img = np.random.default_rng(1).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    a = GLIPDetector(model).predict(img, "cat. dog", score_threshold=0.0, min_size=None)
    b = det.predict(img, "cat. dog", score_threshold=0.0, min_size=None)
    assert [d.box_xyxy for d in a] == [d.box_xyxy for d in b]
