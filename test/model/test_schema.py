"""Official state-dict schemas (GLIP-T, GLIP-T (A), GLIP-L) load into the presets with nothing left over."""

from __future__ import annotations

import json

import pytest
import torch

from glip_ros.model import build_model, load_checkpoint
from glip_ros.model.checkpoint import IGNORED_KEY_PATTERNS

CASES = [
    ("schema_glip_t.json", "glip_t"),
    ("schema_glip_t_a.json", "glip_t_a"),
    ("schema_glip_l.json", "glip_l"),
]


def _meta_model(preset: str):
    with torch.device("meta"):
        return build_model(preset)


def _schema_sd(path):
    with open(path) as f:
        schema = json.load(f)
    dtypes = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16}
    return {
        e["checkpoint_key"]: torch.empty(
            e["shape"], dtype=dtypes.get(e["dtype"].replace("torch.", ""), torch.float32), device="meta"
        )
        for e in schema["entries"]
    }


@pytest.mark.parametrize("schema,preset", CASES)
def test_schema_loads_strictly(fixtures_dir, schema, preset):
    model = _meta_model(preset)
    sd = _schema_sd(fixtures_dir / schema)
    report = load_checkpoint(model, {"model": sd, "model_ema": sd}, strict=True)
    assert report.ok
    assert report.unexpected == [] and report.missing == [] and report.mismatched == []
    # The only ignored entries are the ones we recompute, named in IGNORED_KEY_PATTERNS.
    assert all(any(k.startswith(p) for p in IGNORED_KEY_PATTERNS) for k in report.ignored)
    assert report.loaded + len(report.ignored) == len(sd)


def test_extra_keys_of_real_checkpoints_are_ignored(fixtures_dir):
    model = _meta_model("glip_t")
    sd = _schema_sd(fixtures_dir / "schema_glip_t.json")
    sd["module.language_backbone.body.model.pooler.dense.weight"] = torch.empty(768, 768, device="meta")
    sd["module.language_backbone.body.model.pooler.dense.bias"] = torch.empty(768, device="meta")
    report = load_checkpoint(model, {"model": sd, "model_ema": {}, "optimizer": {}}, strict=True)
    assert "language_backbone.body.model.pooler.dense.weight" in report.ignored


def test_wrong_preset_is_reported(fixtures_dir):
    from glip_ros.model import CheckpointError

    model = _meta_model("glip_t_a")
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(model, _schema_sd(fixtures_dir / "schema_glip_t.json"), strict=True)
