"""Bad checkpoints get clear errors; loading never runs code from the file."""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
import torch

from glip_ros.model import (
    CheckpointError,
    build_model,
    convert_to_safetensors,
    load_checkpoint,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("glip_tiny_test")


def test_missing_file(tiny):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tiny, "/nonexistent/glip.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(tiny, tmp_path, suffix):
    path = str(tmp_path / f"w{suffix}")
    if suffix == ".pth":
        torch.save({"model": tiny.state_dict()}, path)
    else:
        save_checkpoint(tiny, path)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt|cannot read"):
        load_checkpoint(tiny, path)


def test_empty_file(tiny, tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tiny, str(path))


def test_wrong_architecture(tiny, tmp_path):
    other = build_model("glip_t_reduced")
    path = str(tmp_path / "other.safetensors")
    save_checkpoint(tiny, path)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(other, path)


def test_official_format_round_trip(tiny, tmp_path):
    sd = {"module." + k: v.clone() for k, v in tiny.state_dict().items()}
    path = str(tmp_path / "official.pth")
    torch.save({"model": sd, "model_ema": sd, "iteration": 5}, path)
    fresh = build_model("glip_tiny_test")
    report = load_checkpoint(fresh, path)
    assert report.ok and report.loaded == len(sd)
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_objects_are_refused_then_converted_knowingly(tiny, tmp_path):
    sd = {"module." + k: v for k, v in tiny.state_dict().items()}
    path = str(tmp_path / "needs_pickle.pth")
    # An arbitrary object next to the tensors: weights_only loading must refuse it.
    torch.save({"model": sd, "config": collections.Counter(a=1), "obj": np.float64(1.0)}, path)
    fresh = build_model("glip_tiny_test")
    with pytest.raises(CheckpointError, match="glip-convert"):
        load_checkpoint(fresh, path)
    out = str(tmp_path / "converted.safetensors")
    convert_to_safetensors(path, out)
    assert load_checkpoint(fresh, out).ok


def test_saved_checkpoint_carries_config(tiny, tmp_path):
    from glip_ros.engine import GroundingEngine

    path = str(tmp_path / "tiny.safetensors")
    save_checkpoint(tiny, path, dtype=torch.float16)
    eng = GroundingEngine.from_checkpoint(path)
    assert eng.model.config.name == "glip_tiny_test"


def test_garbage_and_ema_only_files_are_explained(tiny, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"hello world" * 10)  # the unpickler raises a bare KeyError on this
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tiny, str(garbage))
    ema = str(tmp_path / "ema.pth")
    torch.save({"model_ema": tiny.state_dict()}, ema)
    with pytest.raises(CheckpointError, match="model_ema"):
        load_checkpoint(tiny, ema)


def test_random_bytes_are_not_sent_to_glip_convert(tiny, tmp_path):
    """torch's weights-only refusal reads the same for random bytes as for a checkpoint that pickles objects;
    only the second gets the glip-convert advice, and glip-convert refuses both damaged kinds itself."""
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as info:
        load_checkpoint(tiny, str(noise))
    assert "glip-convert" not in str(info.value)
    whole = str(tmp_path / "whole.pth")
    torch.save({"model": tiny.state_dict()}, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(open(whole, "rb").read()[:-100])
    for bad in (noise, cut):
        with pytest.raises(CheckpointError, match="cannot read"):
            convert_to_safetensors(str(bad), str(tmp_path / "out.safetensors"))


def test_a_misfit_report_says_how_much_matches(tiny, tmp_path):
    path = str(tmp_path / "tiny.safetensors")
    save_checkpoint(tiny, path)
    with pytest.raises(CheckpointError, match=r"does not fit .*: [1-9]\d* tensors match"):
        load_checkpoint(build_model("glip_tiny_test_a"), path)
