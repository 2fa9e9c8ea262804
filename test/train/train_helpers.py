"""A very small model of the full architecture for the training tests (fast on 2 cores)."""

from __future__ import annotations

from glip_ros.model import GLIPConfig, get_preset


def micro_config() -> GLIPConfig:
    """``glip_tiny_test`` without DCN and drop-path, with the embedded model's anchors and 128-px inputs."""
    cfg = get_preset("glip_tiny_test")
    cfg.name = "glip_micro_test"
    cfg.swin.drop_path_rate = 0.0
    cfg.language.max_position_embeddings = 256
    cfg.head.use_deform = False
    cfg.head.anchor_sizes = (32, 64, 128, 256, 512)
    cfg.min_size = cfg.max_size = 128
    return cfg
