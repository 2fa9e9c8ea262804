"""glip-detect and glip-convert as a user runs them (subprocesses); glip-bench's refusals."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest
from shared_paths import FIXTURES, REDUCED, REPO


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "glip_ros.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_detect_with_an_official_config_returns_the_fixture_detections(fixtures_dir, reduced_tensors):
    r = _run(
        str(FIXTURES / "image_320x480.png"),
        "--query",
        "red circle. blue square. green triangle.",
        "--checkpoint",
        str(REDUCED / "weights_fp16.safetensors"),
        "--config",
        str(REDUCED / "config_merged.yaml"),
        "--bert-config",
        str(REDUCED / "bert_config.json"),
        "--threshold",
        "0",
        "--min-size",
        "0",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    dets = json.loads(r.stdout)
    assert len(dets) == len(reduced_tensors["output__scores"]) == 100
    assert abs(dets[0]["score"] - float(reduced_tensors["output__scores"].max())) < 1e-3


def test_detect_reports_bad_inputs_clearly(tmp_path):
    r = _run(str(tmp_path / "missing.png"), "--query", "cat")
    assert r.returncode == 2 and "cannot read image" in r.stderr
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img)
    r = _run(str(img), "--query", "cat", "--checkpoint", str(tmp_path / "nope.pth"), "--preset", "glip_t")
    assert r.returncode == 2 and "not found" in r.stderr
    r = _run(str(img), "--query", " . , ", "--checkpoint", str(tmp_path / "nope.pth"), "--preset", "glip_t")
    assert r.returncode == 2


def test_glip_bench_runs_both_paths_and_reports_the_dcn_split(tmp_path):
    """glip-bench end to end on the small preset: both paths agree, counters say text is cached; the channel
    split of the DCN's sampling can be turned off for an A/B; frames can start as camera messages (JPEG,
    decoded as the node does) at camera size (resized as the node does), both timed."""
    runs = {"split": ["--sample-group-channels", "16"], "camera": ["--sample-group-channels", "0"]}
    runs["camera"] += ["--decode", "jpeg", "--resize"]
    results = {}
    for name, extra in runs.items():
        out = tmp_path / f"bench_{name}.json"
        r = subprocess.run(
            [sys.executable, "-m", "glip_ros.bench", "--size", "96x128", "--runs", "2", "--warmup", "1"]
            + ["--threads", "1", *extra, "--json", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        results[name] = res = json.loads(out.read_text())
        assert res["complete"] and res["cached"]["text_encodes_per_frame"] == 0
        assert res["cached_vs_official_top20"]["matched"] == 20, res["cached_vs_official_top20"]
    split, camera = results["split"], results["camera"]
    assert split["sample_group_channels"] == 16 and camera["sample_group_channels"] == 0
    assert split["decode"] == "none" and "decode" not in split["cached"] and not split["resize"]
    assert camera["decode"] == "jpeg" and camera["cached"]["decode"]["median_ms"] > 0 and camera["resize"]
    # resized to the preset's test size (shorter side 800): more work than the 96x128 frame as it is
    assert camera["cached"]["preprocess"]["median_ms"] > split["cached"]["preprocess"]["median_ms"]


def test_gpu_bench_runs_are_glip_bench_commands():
    """scripts/gpu_bench.sh runs on a lent GPU machine, minutes of which are scarce: every run it names
    parses as a glip-bench command line here, and its default list names only runs it defines."""
    from glip_ros.bench import build_parser

    script = (REPO / "scripts" / "gpu_bench.sh").read_text()
    shell_vars = dict(re.findall(r'^(S|A)="([^"]*)"$', script, flags=re.M))
    runs = dict(re.findall(r'^  \[(\w+)\]="([^"]*)"$', script, flags=re.M))
    default = re.search(r'^DEFAULT="([^"]*)"', script, flags=re.M | re.S)
    assert set(shell_vars) == {"S", "A"} and len(runs) > 10 and default
    parser = build_parser()
    for name, line in runs.items():
        expanded = re.sub(r"\$(S|A)\b", lambda m: shell_vars[m.group(1)], line)
        assert "$" not in expanded, name
        args = parser.parse_args(shlex.split(expanded))  # exits (fails the test) on an unknown option
        assert args.preset.startswith("glip_"), name
    unknown = set(default.group(1).split()) - set(runs)
    assert not unknown, f"DEFAULT names runs the script does not define: {sorted(unknown)}"


def test_detect_refuses_16_bit_images_and_a_missing_output_folder(tmp_path):
    import numpy as np
    from PIL import Image

    deep = tmp_path / "depth.png"
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(deep)  # convert("RGB") would clip it to white
    r = _run(str(deep), "--query", "cat")
    assert r.returncode == 2 and "8-bit" in r.stderr, r.stderr
    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    r = _run(str(img), "--query", "cat", "--out", str(tmp_path / "missing" / "out.png"))
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr


def test_bench_answers_usage_errors_with_the_reason(capsys):
    """glip-bench: a malformed option is an argparse error, a preset or device that cannot run is one line
    on stderr and exit status 2, not a traceback."""
    from glip_ros.bench import main

    for argv, reason in [
        (["--size", "480"], "not HxW"),
        (["--runs", "0"], "less than 1"),
        (["--cameras", "0"], "less than 1"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and reason in capsys.readouterr().err, argv
    assert main(["--preset", "glip_tt", "--runs", "1", "--malloc", "default"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glip-bench: unknown preset 'glip_tt'") and "Traceback" not in err
