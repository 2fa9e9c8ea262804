"""A very small model of the full architecture for the training tests (fast on 2 cores)."""

from __future__ import annotations

from glip_ros.model import GLIPConfig, HeadConfig, LanguageConfig, SwinConfig


def micro_config() -> GLIPConfig:
    return GLIPConfig(
        name="glip_micro_test",
        swin=SwinConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), drop_path_rate=0.0),
        fpn_channels=32,
        language=LanguageConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
        ),
        head=HeadConfig(
            channels=32,
            num_convs=1,
            fusion_embed_dim=64,
            fusion_num_heads=2,
            group_norm_groups=4,
            use_deform=False,
            anchor_sizes=(32, 64, 128, 256, 512),
        ),
        min_size=128,
        max_size=128,
    )
