"""Shared test settings and fixtures; the paths themselves are in ``shared_paths.py``."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch
from shared_paths import FIXTURES, REDUCED, require_fixtures

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return require_fixtures()


@pytest.fixture(scope="session")
def reduced_model(fixtures_dir):
    from safetensors.torch import load_file

    from glip_ros.model import build_model, load_checkpoint

    model = build_model(str(REDUCED / "config_merged.yaml"), bert_config=str(REDUCED / "bert_config.json"))
    load_checkpoint(model, load_file(str(REDUCED / "weights_fp16.safetensors")))
    return model


@pytest.fixture(scope="session")
def reduced_tensors(fixtures_dir):
    import numpy as np

    return dict(np.load(REDUCED / "tensors_fp32.npz"))


@pytest.fixture(scope="session")
def fixture_image(fixtures_dir):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(FIXTURES / "image_320x480.png").convert("RGB"))
