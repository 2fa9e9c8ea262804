"""Model configuration: one dataclass tree for every GLIP variant.

Presets (``glip_t_a``, ``glip_t``, ``glip_l`` …) and the official YAML files both end in a
:class:`GLIPConfig`, so the rest of the code never looks at where the numbers came from
(the same idea as timm's ``default_cfgs`` and Hugging Face config objects).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SwinConfig",
    "ResNetConfig",
    "LanguageConfig",
    "HeadConfig",
    "GLIPConfig",
    "PRESETS",
    "get_preset",
    "model_spec_error",
    "config_from_official_yaml",
    "resolve_config",
]


@dataclass
class SwinConfig:
    """Swin-Det backbone (GLIP's ``swint.py``); defaults are Swin-T."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    patch_size: int = 4
    qkv_bias: bool = True
    drop_path_rate: float = 0.2


@dataclass
class ResNetConfig:
    """torchvision ResNet body (the paper's other backbone); useful for small CPU models."""

    depth: int = 18
    width: int = 64  # stem width; torchvision's resnet uses 64


@dataclass
class LanguageConfig:
    """BERT encoder sizes. Defaults are bert-base-uncased; the vocabulary is always its WordPiece vocab."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    max_query_len: int = 256

    def to_bert_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("max_query_len")
        d.update(
            model_type="bert",
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            position_embedding_type="absolute",
            initializer_range=0.02,
        )
        return d


@dataclass
class HeadConfig:
    """VL-DyHead + ATSS head, anchors and post-processing (official defaults)."""

    channels: int = 256
    num_convs: int = 6
    early_fusion: bool = True  # False for GLIP-T (A)
    fusion_embed_dim: int = 2048  # hard-coded in the official VLFuse
    fusion_num_heads: int = 8
    num_classes: int = 80  # width of the unused ``cls_logits`` conv (DYHEAD.NUM_CLASSES - 1)
    group_norm_groups: int = 16
    use_dyrelu: bool = True
    use_deform: bool = True
    use_dyfuse: bool = True
    prior_prob: float = 0.01
    log_scale: float = 0.0
    anchor_sizes: tuple[int, ...] = (64, 128, 256, 512, 1024)
    anchor_strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    pre_nms_thresh: float = 0.05
    pre_nms_top_n: int = 1000
    nms_thresh: float = 0.6
    detections_per_img: int = 100
    score_agg: str = "MEAN"


@dataclass
class GLIPConfig:
    name: str = "custom"
    backbone: str = "swin"  # "swin" | "resnet"
    swin: SwinConfig = field(default_factory=SwinConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    fpn_channels: int = 256
    language: LanguageConfig = field(default_factory=LanguageConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    pixel_mean: tuple[float, float, float] = (103.53, 116.28, 123.675)  # BGR, 0..255
    pixel_std: tuple[float, float, float] = (57.375, 57.12, 58.395)
    size_divisibility: int = 32
    min_size: int = 800
    max_size: int = 1333

    # -- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GLIPConfig:
        d = copy.deepcopy(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown GLIPConfig fields: {sorted(unknown)}")
        sub = {"swin": SwinConfig, "resnet": ResNetConfig, "language": LanguageConfig, "head": HeadConfig}
        for key, typ in sub.items():
            if key in d and isinstance(d[key], dict):
                d[key] = _dataclass_from_dict(typ, d[key])
        for key in ("pixel_mean", "pixel_std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    @property
    def lang_dim(self) -> int:
        return self.language.hidden_size


def _dataclass_from_dict(typ: type, d: dict[str, Any]) -> Any:
    names = {f.name: f for f in dataclasses.fields(typ)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"unknown {typ.__name__} fields: {sorted(unknown)}")
    kwargs = {}
    for k, v in d.items():
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    return typ(**kwargs)


def _glip_t(name: str, early_fusion: bool) -> GLIPConfig:
    return GLIPConfig(name=name, head=HeadConfig(early_fusion=early_fusion))


def _glip_l() -> GLIPConfig:
    return GLIPConfig(
        name="glip_l",
        swin=SwinConfig(
            embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12, drop_path_rate=0.4
        ),
        head=HeadConfig(num_convs=8),
    )


def _glip_tiny_test() -> GLIPConfig:
    """A few-MB model of the full architecture (fusion, DyHead, DCN) for tests and CPU experiments."""
    return GLIPConfig(
        name="glip_tiny_test",
        swin=SwinConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)),
        fpn_channels=32,
        language=LanguageConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        ),
        head=HeadConfig(
            channels=32, num_convs=1, fusion_embed_dim=64, fusion_num_heads=2, group_norm_groups=4
        ),
    )


def _glip_synth_tiny() -> GLIPConfig:
    """The embedded default model (docs/MODELS.md): GLIP at toy size, no DCN, 4x-stride anchors."""
    return GLIPConfig(
        name="glip_synth_tiny",
        swin=SwinConfig(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.0),
        fpn_channels=64,
        language=LanguageConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=256,
        ),
        head=HeadConfig(
            channels=64,
            num_convs=2,
            fusion_embed_dim=128,
            fusion_num_heads=4,
            group_norm_groups=8,
            use_deform=False,
            anchor_sizes=(32, 64, 128, 256, 512),
        ),
        min_size=256,
        max_size=448,
    )


def _no_fusion(cfg: GLIPConfig, name: str) -> GLIPConfig:
    cfg.name = name
    cfg.head.early_fusion = False
    return cfg


def _glip_t_reduced() -> GLIPConfig:
    """The shared parity fixture's reduced GLIP-T (built there through official config overrides)."""
    return GLIPConfig(
        name="glip_t_reduced",
        swin=SwinConfig(embed_dim=48, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24)),
        language=LanguageConfig(
            hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024
        ),
        head=HeadConfig(num_convs=2),
    )


PRESETS = {
    "glip_t_a": lambda: _glip_t("glip_t_a", early_fusion=False),
    "glip_t_b": lambda: _glip_t("glip_t_b", early_fusion=True),
    "glip_t_c": lambda: _glip_t("glip_t_c", early_fusion=True),
    "glip_t": lambda: _glip_t("glip_t", early_fusion=True),
    "glip_l": _glip_l,
    "glip_t_reduced": _glip_t_reduced,
    "glip_tiny_test": _glip_tiny_test,
    "glip_tiny_test_a": lambda: _no_fusion(_glip_tiny_test(), "glip_tiny_test_a"),
    "glip_synth_tiny": _glip_synth_tiny,
}


def model_spec_error(spec: str) -> str | None:
    """Why ``spec`` cannot name an architecture (None if it can): a preset name or an existing YAML file.

    Cheap and torch-free, so a caller (the node's parameter check) can refuse a typo when it is set instead
    of at the next model load.
    """
    spec = spec.strip()
    if spec.endswith((".yaml", ".yml")):
        return None if os.path.isfile(os.path.expanduser(spec)) else f"config file not found: {spec!r}"
    if spec in PRESETS:
        return None
    return f"unknown preset {spec!r}; choose one of {sorted(PRESETS)} or an official config .yaml"


def get_preset(name: str) -> GLIPConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


# ------------------------------------------------------------------------------------------------------------
# Official YAML configs (configs/pretrain/*.yaml or a merged cfg.dump())
# ------------------------------------------------------------------------------------------------------------


def _get(d: dict[str, Any], path: str, default: Any) -> Any:
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    if isinstance(cur, str) and cur.strip()[:1] in "([":
        # Official files write tuples as "(96, 192, 384, 768)"; yacs reads them with literal_eval.
        import ast

        cur = ast.literal_eval(cur)
    return cur


def config_from_official_yaml(path: str, bert_config: str | dict[str, Any] | None = None) -> GLIPConfig:
    """Read an official GLIP config file; unspecified keys take the official defaults (defaults.py).

    ``bert_config`` (a ``config.json`` path or dict) replaces bert-base-uncased's sizes, as the official code
    reads them with ``BertConfig.from_pretrained``: both the language backbone and the DyHead BERT layers.
    """
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict) or "MODEL" not in raw:
        raise ValueError(f"{path} does not look like a GLIP config (no MODEL section)")
    model = raw["MODEL"]
    conv_body = str(_get(model, "BACKBONE.CONV_BODY", "SWINT-FPN-RETINANET"))
    if not conv_body.startswith("SWINT"):
        raise ValueError(f"{path}: backbone {conv_body!r} is not supported (only SWINT-FPN-RETINANET)")
    if str(_get(model, "RPN_ARCHITECTURE", "VLDYHEAD")) != "VLDYHEAD":
        raise ValueError(f"{path}: only RPN_ARCHITECTURE VLDYHEAD (GLIP) is supported")
    if str(_get(model, "LANGUAGE_BACKBONE.MODEL_TYPE", "bert-base-uncased")) != "bert-base-uncased":
        raise ValueError(f"{path}: only the bert-base-uncased language backbone is supported")
    fuse_type = str(_get(model, "DYHEAD.FUSE_CONFIG.TYPE", "MHA-B"))
    early = bool(_get(model, "DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON", False))
    if early and fuse_type != "MHA-B":
        raise ValueError(f"{path}: fusion type {fuse_type!r} is not supported (only MHA-B)")
    fused_dot = bool(_get(model, "DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT", False))
    if early != fused_dot:
        raise ValueError(
            f"{path}: EARLY_FUSE_ON and USE_FUSED_FEATURES_DOT_PRODUCT must agree (as in GLIP-T/L)"
        )

    sw = SwinConfig(
        embed_dim=int(_get(model, "SWINT.EMBED_DIM", 96)),
        depths=tuple(int(x) for x in _get(model, "SWINT.DEPTHS", (2, 2, 6, 2))),
        num_heads=tuple(int(x) for x in _get(model, "SWINT.NUM_HEADS", (3, 6, 12, 24))),
        window_size=int(_get(model, "SWINT.WINDOW_SIZE", 7)),
        mlp_ratio=float(_get(model, "SWINT.MLP_RATIO", 4)),
        drop_path_rate=float(_get(model, "SWINT.DROP_PATH_RATE", 0.2)),
    )
    out_channels = tuple(int(x) for x in _get(model, "SWINT.OUT_CHANNELS", (96, 192, 384, 768)))
    expected = tuple(sw.embed_dim * 2**i for i in range(len(sw.depths)))
    if out_channels != expected:
        raise ValueError(
            f"{path}: SWINT.OUT_CHANNELS {out_channels} must equal {expected} for EMBED_DIM {sw.embed_dim}"
        )

    score_agg = str(_get(model, "DYHEAD.SCORE_AGG", "MEAN"))
    if score_agg != "MEAN":  # post-processing implements the MEAN of token probabilities only
        raise ValueError(f"{path}: DYHEAD.SCORE_AGG {score_agg!r} is not supported (only MEAN)")
    if int(_get(model, "LANGUAGE_BACKBONE.N_LAYERS", 1)) != 1:
        raise ValueError(f"{path}: LANGUAGE_BACKBONE.N_LAYERS must be 1 (the last BERT layer)")
    lang = LanguageConfig(max_query_len=int(_get(model, "LANGUAGE_BACKBONE.MAX_QUERY_LEN", 256)))
    if bert_config is not None:
        if isinstance(bert_config, str):
            if not os.path.isfile(bert_config):
                raise FileNotFoundError(f"bert config not found: {bert_config}")
            with open(bert_config, encoding="utf-8") as f:
                bert_config = json.load(f)
        assert isinstance(bert_config, dict)
        for k in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "layer_norm_eps",
            "hidden_act",
            "pad_token_id",
        ):
            if k in bert_config:
                setattr(lang, k, bert_config[k])
    lang_dim = int(_get(model, "LANGUAGE_BACKBONE.LANG_DIM", 768))
    if lang_dim != lang.hidden_size:
        raise ValueError(
            f"{path}: LANG_DIM {lang_dim} != BERT hidden_size {lang.hidden_size} (pass bert_config)"
        )

    head = HeadConfig(
        channels=int(_get(model, "DYHEAD.CHANNELS", 256)),
        num_convs=int(_get(model, "DYHEAD.NUM_CONVS", 6)),
        early_fusion=early,
        num_classes=int(_get(model, "DYHEAD.NUM_CLASSES", 81)) - 1,
        group_norm_groups=int(_get(model, "GROUP_NORM.NUM_GROUPS", 16)),
        use_dyrelu=bool(_get(model, "DYHEAD.USE_DYRELU", True)),
        use_deform=bool(_get(model, "DYHEAD.USE_DFCONV", True)),
        use_dyfuse=bool(_get(model, "DYHEAD.USE_DYFUSE", True)),
        prior_prob=float(_get(model, "DYHEAD.PRIOR_PROB", 0.01)),
        log_scale=float(_get(model, "DYHEAD.LOG_SCALE", 0.0)),
        anchor_sizes=tuple(int(x) for x in _get(model, "RPN.ANCHOR_SIZES", (64, 128, 256, 512, 1024))),
        anchor_strides=tuple(int(x) for x in _get(model, "RPN.ANCHOR_STRIDE", (8, 16, 32, 64, 128))),
        pre_nms_thresh=float(_get(model, "ATSS.INFERENCE_TH", 0.05)),
        pre_nms_top_n=int(_get(model, "ATSS.PRE_NMS_TOP_N", 1000)),
        nms_thresh=float(_get(model, "ATSS.NMS_TH", 0.6)),
        detections_per_img=int(_get(model, "ATSS.DETECTIONS_PER_IMG", 100)),
        score_agg=str(_get(model, "DYHEAD.SCORE_AGG", "MEAN")),
    )
    if (
        tuple(_get(model, "RPN.ASPECT_RATIOS", (1.0,))) != (1.0,)
        or int(_get(model, "RPN.SCALES_PER_OCTAVE", 1)) != 1
    ):
        raise ValueError(f"{path}: only one anchor per location (ASPECT_RATIOS (1.0,), SCALES_PER_OCTAVE 1)")
    fpn_channels = int(_get(model, "BACKBONE.OUT_CHANNELS", 256))
    inp = raw.get("INPUT", {}) or {}
    name = os.path.splitext(os.path.basename(path))[0]
    return GLIPConfig(
        name=name,
        backbone="swin",
        swin=sw,
        fpn_channels=fpn_channels,
        language=lang,
        head=head,
        pixel_mean=tuple(float(x) for x in inp.get("PIXEL_MEAN", (103.53, 116.28, 123.675))),
        pixel_std=tuple(float(x) for x in inp.get("PIXEL_STD", (57.375, 57.12, 58.395))),
        size_divisibility=int(_get(raw, "DATALOADER.SIZE_DIVISIBILITY", 32)),
        min_size=int(inp.get("MIN_SIZE_TEST", 800)),
        max_size=int(inp.get("MAX_SIZE_TEST", 1333)),
    )


def resolve_config(
    spec: str | GLIPConfig | dict[str, Any], bert_config: str | dict[str, Any] | None = None
) -> GLIPConfig:
    """A preset name, an official YAML path, a dict or a GLIPConfig -> GLIPConfig."""
    if isinstance(spec, GLIPConfig):
        return copy.deepcopy(spec)
    if isinstance(spec, dict):
        return GLIPConfig.from_dict(spec)
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"model spec must be a preset name, a YAML path or a GLIPConfig, got {spec!r}")
    if spec.endswith((".yaml", ".yml")):
        return config_from_official_yaml(spec, bert_config=bert_config)
    if bert_config is not None:
        raise ValueError("bert_config is only used with an official YAML config")
    return get_preset(spec)


def _as_tuple(x: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in x)
