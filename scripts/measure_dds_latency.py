#!/usr/bin/env python3
"""Latency of camera-sized sensor_msgs/Image between two processes, per Fast DDS transport setting.

    .venv/bin/python scripts/measure_dds_latency.py [--count 100] [--rate 10] [--width 1280 --height 720]

For each setting it starts a subscriber process and a publisher process (this script with --role), sends
`--warmup + --count` rgb8 images, RELIABLE / KEEP_LAST 5, and measures receive time minus header.stamp
(both processes on this machine, one clock). ROS_DOMAIN_ID is random in 1..101 unless set.
Prints a table: discovery time (publisher sees the subscriber), latency of the first message, then
median / p90 / min / max over the counted messages, and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time

LARGE = {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}
LOCAL = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
# Each setting starts from an environment without these variables, so only what is listed applies.
SETTINGS: list[tuple[str, dict[str, str]]] = [
    ("defaults", {}),
    ("FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA", LARGE),
    ("ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST", LOCAL),
    ("LOCALHOST + LARGE_DATA", {**LOCAL, **LARGE}),
]
CLEARED = (
    "FASTDDS_BUILTIN_TRANSPORTS",
    "ROS_AUTOMATIC_DISCOVERY_RANGE",
    "ROS_LOCALHOST_ONLY",
    "FASTRTPS_DEFAULT_PROFILES_FILE",
    "FASTDDS_DEFAULT_PROFILES_FILE",
)
TOPIC = "dds_latency/image"


def _qos():
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE)


def run_subscriber(args: argparse.Namespace) -> None:
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("dds_latency_sub")
    latencies_ms: list[float] = []

    def on_image(msg: Image) -> None:
        sent_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        latencies_ms.append((time.time_ns() - sent_ns) / 1e6)

    node.create_subscription(Image, TOPIC, on_image, _qos())
    total = args.warmup + args.count
    deadline = time.monotonic() + args.timeout
    while len(latencies_ms) < total and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps({"latencies_ms": latencies_ms}), flush=True)
    node.destroy_node()
    rclpy.shutdown()


def run_publisher(args: argparse.Namespace) -> None:
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("dds_latency_pub")
    pub = node.create_publisher(Image, TOPIC, _qos())
    t0 = time.monotonic()
    while pub.get_subscription_count() == 0:
        if time.monotonic() - t0 > args.timeout:
            print(json.dumps({"error": "subscriber not discovered"}), flush=True)
            return
        rclpy.spin_once(node, timeout_sec=0.01)
    discovery_s = time.monotonic() - t0

    msg = Image(height=args.height, width=args.width, encoding="rgb8", step=args.width * 3)
    msg.data = bytes(random.getrandbits(8) for _ in range(256)) * (args.height * args.width * 3 // 256)
    publish_ms: list[float] = []
    period = 1.0 / args.rate
    next_t = time.monotonic()
    for _ in range(args.warmup + args.count):
        now_ns = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
        t = time.perf_counter()
        pub.publish(msg)
        publish_ms.append((time.perf_counter() - t) * 1e3)
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))
    time.sleep(1.0)  # let reliable delivery finish before the writer goes away
    print(json.dumps({"discovery_s": discovery_s, "publish_ms": statistics.median(publish_ms)}), flush=True)
    node.destroy_node()
    rclpy.shutdown()


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no result from child process; its output was:\n{text}")


def measure(name: str, extra_env: dict[str, str], args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(extra_env)
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    common = [
        f"--count={args.count}",
        f"--warmup={args.warmup}",
        f"--rate={args.rate}",
        f"--width={args.width}",
        f"--height={args.height}",
        f"--timeout={args.timeout}",
    ]
    me = [sys.executable, os.path.abspath(__file__)]
    sub = subprocess.Popen([*me, "--role=sub", *common], env=env, stdout=subprocess.PIPE, text=True)
    pub = subprocess.Popen([*me, "--role=pub", *common], env=env, stdout=subprocess.PIPE, text=True)
    pub_out, _ = pub.communicate(timeout=args.timeout + args.count / args.rate + 60)
    sub_out, _ = sub.communicate(timeout=args.timeout + 60)
    p, s = _last_json(pub_out), _last_json(sub_out)
    if "error" in p:
        raise RuntimeError(f"{name}: {p['error']}")
    lat = s["latencies_ms"]
    counted = sorted(lat[args.warmup :])
    row = {
        "setting": name,
        "discovery_s": p["discovery_s"],
        "publish_ms": p["publish_ms"],
        "received": f"{len(lat)}/{args.warmup + args.count}",
        "first_ms": lat[0] if lat else float("nan"),
    }
    if counted:
        row.update(
            median_ms=statistics.median(counted),
            p90_ms=counted[int(0.9 * (len(counted) - 1))],
            min_ms=counted[0],
            max_ms=counted[-1],
        )
    return row


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, load {load:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=["sub", "pub"], help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=100, help="messages counted (default 100)")
    ap.add_argument("--warmup", type=int, default=10, help="messages sent first and not counted (default 10)")
    ap.add_argument("--rate", type=float, default=10.0, help="publish rate in Hz (default 10)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--timeout", type=float, default=30.0, help="discovery / receive timeout in s")
    ap.add_argument("--repeat", type=int, default=1, help="runs per setting (default 1)")
    args = ap.parse_args()
    if args.role == "sub":
        return run_subscriber(args)
    if args.role == "pub":
        return run_publisher(args)

    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
    rows = [measure(name, env, args) for name, env in SETTINGS for _ in range(args.repeat)]
    size = args.width * args.height * 3
    rmw = os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    print(
        f"{args.width}x{args.height} rgb8 Image ({size:,} bytes), RELIABLE KEEP_LAST 5, {args.rate:g} Hz, "
        f"{args.count} counted after {args.warmup} warm-up; {rmw}, domain {os.environ['ROS_DOMAIN_ID']}"
    )
    print(f"machine: {machine()}, Python {platform.python_version()}")
    print()
    header = "| setting | discovery | first msg | median | p90 | min | max | publish() | received |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        print(
            f"| {r['setting']} | {r['discovery_s']:.2f} s | {r['first_ms']:.1f} ms | "
            f"{r.get('median_ms', float('nan')):.1f} ms | {r.get('p90_ms', float('nan')):.1f} ms | "
            f"{r.get('min_ms', float('nan')):.1f} ms | {r.get('max_ms', float('nan')):.1f} ms | "
            f"{r['publish_ms']:.2f} ms | {r['received']} |"
        )


if __name__ == "__main__":
    main()
