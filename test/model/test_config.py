"""Official config files (as the GLIP repository writes them) resolve to the same architecture as the
presets."""

from __future__ import annotations

import pytest

from glip_ros.model.config import config_from_official_yaml, get_preset, model_spec_error, resolve_config

# Written the way the official configs/pretrain/*.yaml are: tuples as strings, only non-default keys.
GLIP_T_YAML = """
MODEL:
  META_ARCHITECTURE: "GeneralizedVLRCNN"
  RPN_ONLY: True
  RPN_ARCHITECTURE: "VLDYHEAD"
  BACKBONE:
    CONV_BODY: "SWINT-FPN-RETINANET"
    OUT_CHANNELS: 256
  LANGUAGE_BACKBONE:
    MODEL_TYPE: "bert-base-uncased"
    LANG_DIM: 768
  RPN:
    ANCHOR_SIZES: (64, 128, 256, 512, 1024)
    ANCHOR_STRIDE: (8, 16, 32, 64, 128)
    ASPECT_RATIOS: (1.0,)
    SCALES_PER_OCTAVE: 1
  DYHEAD:
    CHANNELS: 256
    NUM_CONVS: 6
    USE_GN: True
    USE_DYRELU: True
    USE_DFCONV: True
    USE_DYFUSE: True
    FUSE_CONFIG:
      EARLY_FUSE_ON: {early}
      TYPE: "MHA-B"
      USE_FUSED_FEATURES_DOT_PRODUCT: {early}
      USE_DOT_PRODUCT_TOKEN_LOSS: True
  SWINT:
    OUT_CHANNELS: (96, 192, 384, 768)
INPUT:
  PIXEL_MEAN: [103.530, 116.280, 123.675]
  PIXEL_STD: [57.375, 57.120, 58.395]
"""


@pytest.mark.parametrize("early,preset", [("True", "glip_t"), ("False", "glip_t_a")])
def test_official_style_yaml_matches_preset(tmp_path, early, preset):
    path = tmp_path / "cfg.yaml"
    path.write_text(GLIP_T_YAML.format(early=early))
    got = config_from_official_yaml(str(path)).to_dict()
    want = get_preset(preset).to_dict()
    got.pop("name")
    want.pop("name")
    assert got == want


def test_bad_configs_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError):
        config_from_official_yaml(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("SOLVER:\n  BASE_LR: 0.1\n")
    with pytest.raises(ValueError, match="MODEL"):
        config_from_official_yaml(str(bad))
    rcnn = tmp_path / "rcnn.yaml"
    rcnn.write_text("MODEL:\n  BACKBONE:\n    CONV_BODY: R-50-FPN\n")
    with pytest.raises(ValueError, match="not supported"):
        config_from_official_yaml(str(rcnn))
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_config("glip_xl")


def test_model_spec_error_names_the_problem(tmp_path):
    assert model_spec_error("glip_t") is None and model_spec_error(" glip_l ") is None
    yaml_file = tmp_path / "glip_Swin_T_O365_GoldG.yaml"
    yaml_file.write_text("MODEL: {}\n")
    assert model_spec_error(str(yaml_file)) is None
    assert "unknown preset 'glip_tt'" in model_spec_error("glip_tt") and "glip_t_a" in model_spec_error("x")
    assert "config file not found" in model_spec_error(str(tmp_path / "missing.yaml"))


def test_official_settings_that_are_not_implemented_are_refused(tmp_path):
    for line, key in (("    SCORE_AGG: MAX\n", "SCORE_AGG"), ("    N_LAYERS: 2\n", "N_LAYERS")):
        section = "  DYHEAD:\n" if key == "SCORE_AGG" else "  LANGUAGE_BACKBONE:\n"
        path = tmp_path / f"{key}.yaml"
        path.write_text(GLIP_T_YAML.format(early="True").replace(section, section + line, 1))
        with pytest.raises(ValueError, match=key):
            config_from_official_yaml(str(path))
