"""The embedded model's training chain (configs/train/embedded_chain.yaml): every stage's recorded config and
overrides parse, build and train a step, each stage starting from the previous stage's export (smoke mode)."""

from __future__ import annotations

import os

import pytest

from glip_ros.train.reproduce import fewshot_table, load_chain, run_chain, stage_argv
from glip_ros.train.trainer import load_train_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # the chain and its configs name repository paths


def test_chain_stages_keep_the_recorded_overrides(tmp_path) -> None:
    stages = load_chain()
    assert [s.name for s in stages] == ["stage1", "stage2", "stage3", "stage4", "stage5"]
    prev = None
    for st in stages:
        argv = stage_argv(st, str(tmp_path), prev, device="cpu")
        cfg = load_train_config(argv[1], [a for a in argv[2:] if "=" in a and not a.startswith("--")])
        assert cfg.resume is False
        assert cfg.init_checkpoint == prev
        prev = os.path.join(str(tmp_path), st.name, "glip_synth_tiny.safetensors")
    last = load_train_config(stages[-1].config, stages[-1].overrides)
    assert (last.lr, last.steps, last.warmup_steps, last.data["seed"], last.time_budget_s) == (
        0.0002,
        1000,
        30,
        6,
        720,
    )


def test_chain_smoke_runs_every_stage(tmp_path, capsys) -> None:
    final = run_chain(str(tmp_path), device="cpu", threads=1, smoke_steps=1)
    out = capsys.readouterr().out
    for i in range(1, 6):
        assert os.path.isfile(tmp_path / f"stage{i}" / "glip_synth_tiny.safetensors")
        if i > 1:
            assert f"init_checkpoint={tmp_path}/stage{i - 1}/glip_synth_tiny.safetensors" in out
    assert os.path.isfile(final)
    from glip_ros.detector import GLIPDetector

    assert GLIPDetector.from_checkpoint(final).model.config.name == "glip_synth_tiny"


def test_fewshot_table(tmp_path) -> None:
    import json

    for run, seed, heart, ap in (
        ("zero_shot", 0, 0.2, 0.6),
        ("prompt_k10", 0, 0.6, 0.7),
        ("prompt_k10", 1, 0.5, 0.8),
    ):
        (tmp_path / f"fewshot_{run}_s{seed}.json").write_text(
            json.dumps({"AP": ap, "per_category": {"heart": heart}})
        )
    table = fewshot_table(str(tmp_path)).splitlines()
    assert table[2] == "| zero_shot | 0 | 0.200 | 0.600 |"
    assert table[3] == "| prompt_k10 | 0,1 | 0.550 (0.600 / 0.500) | 0.750 (0.700 / 0.800) |"
