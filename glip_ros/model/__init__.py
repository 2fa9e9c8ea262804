"""GLIP in plain PyTorch (no ROS imports anywhere below this package)."""

from .checkpoint import (
    CheckpointError,
    LoadReport,
    convert_to_safetensors,
    load_checkpoint,
    read_checkpoint_config,
    read_state_dict,
    save_checkpoint,
)
from .config import PRESETS, GLIPConfig, HeadConfig, LanguageConfig, ResNetConfig, SwinConfig, get_preset
from .glip import GLIPModel, build_model, resize_shape
from .head import BoxCoder, HeadOutputs
from .language import TextFeatures, get_tokenizer

__all__ = [
    "GLIPConfig",
    "SwinConfig",
    "ResNetConfig",
    "LanguageConfig",
    "HeadConfig",
    "PRESETS",
    "get_preset",
    "GLIPModel",
    "build_model",
    "resize_shape",
    "BoxCoder",
    "HeadOutputs",
    "TextFeatures",
    "get_tokenizer",
    "load_checkpoint",
    "save_checkpoint",
    "read_state_dict",
    "read_checkpoint_config",
    "convert_to_safetensors",
    "CheckpointError",
    "LoadReport",
]
