"""Run the chain of training stages that made the embedded model (``configs/train/embedded_chain.yaml``).

``python -m glip_ros.train.reproduce --out DIR [--device cpu|cuda] [--smoke]`` runs each stage with
``glip-train`` (in this process), stage N initialised from stage N-1's fp16 export, and copies the last
export to ``DIR/glip_synth_tiny.safetensors``. ``--smoke`` runs every stage with the same config and
overrides plus a few steps of batch 2 (no time budget, no worker processes): a check that each stage's
config parses, builds, loads the previous stage's file and trains, in well under a minute on a CPU.
``scripts/train_embedded.sh --reproduce`` calls this, then evaluates the result.

``python -m glip_ros.train.reproduce fewshot-table METRICS_DIR`` prints the few-shot / prompt-tuning table
from the ``fewshot_*.json`` files ``scripts/train_embedded.sh --fewshot`` writes.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field

__all__ = ["Stage", "load_chain", "stage_argv", "run_chain", "fewshot_table"]

DEFAULT_CHAIN = "configs/train/embedded_chain.yaml"
SMOKE_OVERRIDES = [
    "batch_size=2",
    "warmup_steps=1",
    "time_budget_s=0",
    "num_workers=0",
    "save_every=0",
    "progress=false",
    "log_every=1",
]


@dataclass
class Stage:
    name: str
    config: str
    overrides: list[str] = field(default_factory=list)
    recorded: str = ""


def load_chain(path: str = DEFAULT_CHAIN) -> list[Stage]:
    import yaml

    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    stages = [Stage(**s) for s in raw.get("stages", [])]
    if not stages:
        raise ValueError(f"{path}: no stages")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: stage names repeat: {names}")
    return stages


def stage_argv(
    stage: Stage,
    out: str,
    init: str | None,
    device: str | None = None,
    threads: int | None = None,
    smoke_steps: int = 0,
) -> list[str]:
    """The ``glip-train`` arguments of one stage: its recorded config and overrides, then the chain's own
    (start file, fresh out_dir, export), then the smoke-mode limits if any (they come last, so they win)."""
    d = os.path.join(out, stage.name)
    argv = ["--config", stage.config, "--out-dir", os.path.join(d, "pretrain")]
    argv += ["--export", os.path.join(d, "glip_synth_tiny.safetensors")]
    if device:
        argv += ["--device", device]
    argv += ["resume=false", *stage.overrides]
    if init:
        argv.append(f"init_checkpoint={init}")
    if threads:
        argv.append(f"threads={threads}")
    if smoke_steps > 0:
        argv += [*SMOKE_OVERRIDES, f"steps={smoke_steps}"]
    return argv


def run_chain(
    out: str,
    chain: str = DEFAULT_CHAIN,
    device: str | None = None,
    threads: int | None = None,
    smoke_steps: int = 0,
    only: list[str] | None = None,
) -> str:
    """Run the stages in order; returns ``out/glip_synth_tiny.safetensors`` (a copy of the last export)."""
    from .cli import train_main

    stages = load_chain(chain)
    os.makedirs(out, exist_ok=True)
    init: str | None = None
    timings = []
    for st in stages:
        export = os.path.join(out, st.name, "glip_synth_tiny.safetensors")
        if only and st.name not in only:
            if not os.path.isfile(export):
                raise FileNotFoundError(f"stage {st.name} is skipped but its export {export} is missing")
            init = export
            continue
        argv = stage_argv(st, out, init, device, threads, smoke_steps)
        print(f"== {st.name} (recorded: {st.recorded})\n   glip-train {' '.join(argv)}", flush=True)
        t0 = time.time()
        rc = train_main(argv)
        if rc != 0:
            raise RuntimeError(f"stage {st.name} failed (glip-train exit {rc})")
        timings.append((st.name, time.time() - t0))
        init = export
    final = os.path.join(out, "glip_synth_tiny.safetensors")
    assert init is not None
    shutil.copyfile(init, final)
    for name, sec in timings:
        print(f"   {name}: {sec:.0f} s")
    print(f"== chain done: {final}", flush=True)
    return final


def fewshot_table(metrics_dir: str) -> str:
    """Markdown table of heart / all-shapes AP from ``fewshot_<run>_s<seed>.json`` (mean and each seed)."""
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(glob.glob(os.path.join(metrics_dir, "fewshot_*.json"))):
        m = re.fullmatch(r"fewshot_(.+)_s(\d+)\.json", os.path.basename(path))
        if m is None:
            continue
        with open(path, encoding="utf-8") as f:
            runs.setdefault(m.group(1), {})[int(m.group(2))] = json.load(f)
    order = ["zero_shot", "full_k1", "full_k5", "full_k10", "prompt_k10"]
    names = [r for r in order if r in runs] + sorted(r for r in runs if r not in order)
    lines = [
        "| run | seeds | heart AP (mean; per seed) | all-shapes AP (mean; per seed) |",
        "|---|---|---|---|",
    ]
    for r in names:
        seeds = sorted(runs[r])
        heart = [runs[r][s]["per_category"].get("heart", float("nan")) for s in seeds]
        allap = [runs[r][s]["AP"] for s in seeds]

        def cell(v: list[float]) -> str:
            each = " / ".join(f"{x:.3f}" for x in v)
            return f"{sum(v) / len(v):.3f}" + (f" ({each})" if len(v) > 1 else "")

        lines.append(f"| {r} | {','.join(map(str, seeds))} | {cell(heart)} | {cell(allap)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fewshot-table":
        if len(argv) != 2:
            print("usage: python -m glip_ros.train.reproduce fewshot-table METRICS_DIR", file=sys.stderr)
            return 2
        print(fewshot_table(argv[1]))
        return 0
    ap = argparse.ArgumentParser(
        prog="python -m glip_ros.train.reproduce",
        description="Run the chained training stages that made the embedded model.",
    )
    ap.add_argument("--out", required=True, help="folder for each stage's files and the final model")
    ap.add_argument("--chain", default=DEFAULT_CHAIN, help=f"stage list (default {DEFAULT_CHAIN})")
    ap.add_argument("--device", help="replaces each stage config's device (cpu, cuda, ...)")
    ap.add_argument("--threads", type=int, help="CPU threads per stage (default: each config's)")
    ap.add_argument(
        "--smoke",
        type=int,
        nargs="?",
        const=2,
        default=0,
        metavar="STEPS",
        help="check mode: every stage for STEPS (default 2) steps of batch 2",
    )
    ap.add_argument("--only", help="run only these stages (comma separated); the others' exports must exist")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    try:
        run_chain(args.out, args.chain, args.device, args.threads, args.smoke, only)
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
