"""``glip-demo``: the sim demo graph without ROS launch.

Starts, as separate processes, the same graph as ``launch/sim_demo.launch.py`` (minus rviz2):

1. ``glip_node`` on the embedded default model (or ``--checkpoint``),
2. ``synthetic_camera`` publishing rendered scenes of coloured shapes on ``image``,
3. ``glip_scripted_queries`` sending a sequence of queries, printing the detections received per query and
   writing annotated frames (from ``debug_image``) under ``--out``.

Why not ``ros2 launch``: launch/launch_ros are not installable from PyPI, so on pip-only machines this is the
way to see the node work. It exits with the query script's exit code (0 when every query was answered) and
stops the other processes. Run ``rviz2 -d config/glip.rviz`` alongside on a real ROS install to watch.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

__all__ = ["build_commands", "main"]

DEFAULT_QUERIES = ("red circle. blue square", "green triangle", "")


def _yaml_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def build_commands(args: argparse.Namespace, params_dir: str) -> dict[str, list[str]]:
    """The three command lines of the demo graph (also used by the launch-file test)."""
    py = sys.executable
    node_yaml = os.path.join(params_dir, "glip_node.yaml")
    with open(node_yaml, "w") as f:  # a params file: quoting of empty strings on a CLI is fragile
        f.write("glip_node:\n  ros__parameters:\n")
        f.write(f"    checkpoint: {_yaml_str(args.checkpoint or '')}\n")
        f.write(f"    preset: {_yaml_str(args.preset or '')}\n")
        f.write(f"    device: {_yaml_str(args.device)}\n")
        f.write("    query: ''\n")
        f.write(f"    score_threshold: {float(args.score_threshold)}\n")
        if args.min_size is not None:
            f.write(f"    min_size: {int(args.min_size)}\n")
    node_params = ["--params-file", node_yaml]
    script_yaml = os.path.join(params_dir, "scripted_queries.yaml")
    with open(script_yaml, "w") as f:
        f.write("glip_scripted_queries:\n  ros__parameters:\n")
        f.write("    queries: [" + ", ".join(_yaml_str(q) for q in args.queries) + "]\n")
        f.write(f"    period: {float(args.duration) / max(1, len(args.queries)):.3f}\n")
        f.write(f"    out: {_yaml_str(args.out)}\n")
        f.write(f"    wait_timeout: {float(args.wait_timeout):.1f}\n")
    return {
        "glip_node": [py, "-m", "glip_ros.ros.node", "--ros-args", *node_params],
        "synthetic_camera": [
            py, "-m", "glip_ros.ros.synthetic_camera", "--ros-args",
            "-p", f"rate:={args.rate}", "-p", f"width:={args.width}", "-p", f"height:={args.height}",
        ],
        "glip_scripted_queries": [
            py, "-m", "glip_ros.ros.scripted_queries", "--ros-args", "--params-file", script_yaml,
        ],
    }  # fmt: skip


def _default_checkpoint() -> str:
    """Path of the embedded default model (the engine's DEFAULT_CHECKPOINT; a missing model fails fast)."""
    try:
        from glip_ros.engine import DEFAULT_CHECKPOINT

        return str(DEFAULT_CHECKPOINT)
    except Exception:  # noqa: BLE001 - fall back to the documented location
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return os.path.join(here, "weights", "glip_synth_tiny.safetensors")


def _stop(procs: dict[str, subprocess.Popen]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 10
    for p in procs.values():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code (0 = every query acknowledged and answered)."""
    ap = argparse.ArgumentParser(prog="glip-demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="", help="model checkpoint (default: the embedded default model)")
    ap.add_argument("--preset", default="", help="model preset, for checkpoints without an embedded config")
    ap.add_argument("--out", default="out/demo", help="folder for annotated frames (default: out/demo)")
    ap.add_argument("--duration", type=float, default=24.0, help="seconds of the query script, all queries")
    ap.add_argument(
        "--queries",
        nargs="+",
        default=list(DEFAULT_QUERIES),
        help="queries in order; '' or '-' = idle (default: 'red circle. blue square' 'green triangle' '')",
    )
    ap.add_argument("--rate", type=float, default=5.0, help="camera frame rate in Hz (default 5)")
    # 320x240: the embedded model looks at 256 px anyway, and 640x480 frames (0.9 MB) over Fast DDS's default
    # transports lost most frames under load here (1-8 of 15 answered per query vs 11-15 at 320x240).
    ap.add_argument("--width", type=int, default=320, help="camera width (default 320)")
    ap.add_argument("--height", type=int, default=240, help="camera height (default 240)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument(
        "--min-size", type=int, default=None, help="model input shorter side (default: the checkpoint's own)"
    )
    ap.add_argument("--score-threshold", type=float, default=0.5)
    ap.add_argument("--wait-timeout", type=float, default=180.0, help="seconds to wait for the model to load")
    ap.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID for the graph (default: env)")
    args = ap.parse_args(argv)
    args.queries = ["" if q == "-" else q for q in args.queries]
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        print(f"glip-demo: checkpoint not found: {args.checkpoint}", file=sys.stderr)
        return 2
    if not args.checkpoint:
        default = _default_checkpoint()
        if not os.path.isfile(default):
            print(
                f"glip-demo: the embedded default model is missing ({default}). Produce it as "
                "docs/MODELS.md says, or pass --checkpoint FILE.",
                file=sys.stderr,
            )
            return 2
    os.makedirs(args.out, exist_ok=True)

    env = dict(os.environ)
    if args.domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(args.domain_id)
    procs: dict[str, subprocess.Popen] = {}
    with tempfile.TemporaryDirectory(prefix="glip_demo_") as tmp:
        cmds = build_commands(args, tmp)
        try:
            for name in ("glip_node", "synthetic_camera", "glip_scripted_queries"):
                procs[name] = subprocess.Popen(cmds[name], env=env)
            script = procs["glip_scripted_queries"]
            limit = args.wait_timeout + args.duration + 60 * len(args.queries) + 30
            try:
                rc = script.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                print(f"glip-demo: query script did not finish within {limit:.0f} s", file=sys.stderr)
                rc = 3
            for name, p in procs.items():
                if name != "glip_scripted_queries" and p.poll() is not None:
                    print(f"glip-demo: {name} exited early with code {p.returncode}", file=sys.stderr)
                    rc = rc or 4
        except KeyboardInterrupt:
            rc = 130
        finally:
            _stop(procs)
    print(
        f"glip-demo: {'done' if rc == 0 else f'FAILED ({rc})'}; annotated frames in {args.out}/", flush=True
    )
    return rc


if __name__ == "__main__":
    sys.exit(main())
