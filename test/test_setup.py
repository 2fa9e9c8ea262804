"""Checks of the development setup (scripts/setup.sh): interfaces built, importable, and wire-compatible.

Fast: no model, one in-process ROS round trip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# vision_msgs 4.1.1 (ros-perception/vision_msgs), as shipped by the ROS distributions. A different value
# means our third_party/vision_msgs copy drifted from upstream and would not interoperate.
DETECTION2DARRAY_HASH = "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968"


def _interface_files() -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("msg/*.msg"), *REPO.glob("srv/*.srv")])


def test_glip_ros_is_imported_from_the_source_tree():
    import glip_ros

    assert Path(glip_ros.__file__).resolve() == REPO / "glip_ros" / "__init__.py", (
        f"glip_ros imported from {glip_ros.__file__}; tests must test the working tree"
    )


@pytest.mark.parametrize("cwd", ["repo", "/"])
def test_a_child_process_finds_source_tree_and_generated_interfaces(cwd):
    """What node processes started by tests see: `python -c/-m ...` from the repo root or elsewhere."""
    if Path(sys.prefix).resolve() != REPO / ".venv":
        pytest.skip("not the venv made by scripts/setup.sh (its editable install is what is checked)")
    pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: run scripts/setup.sh")
    code = "import glip_ros, glip_ros.msg, glip_ros.srv; print(glip_ros.__file__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO if cwd == "repo" else cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == REPO / "glip_ros" / "__init__.py"


def test_every_interface_file_is_built_by_cmake():
    cmake = (REPO / "CMakeLists.txt").read_text()
    listed = sorted(re.findall(r'"((?:msg|srv)/\w+\.(?:msg|srv))"', cmake))
    assert listed == _interface_files()


def test_generated_interfaces_import_with_the_agreed_fields():
    pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: run scripts/setup.sh")
    from glip_ros.msg import GroundingResult, PhraseSpan, QueryState
    from glip_ros.srv import Ground, SetQuery

    def fields(cls) -> dict[str, str]:
        return dict(cls.get_fields_and_field_types())

    assert fields(PhraseSpan) == {"phrase": "string", "start": "uint32", "end": "uint32"}
    assert fields(QueryState) == {
        "header": "std_msgs/Header",
        "query_id": "uint32",
        "query": "string",
        "caption": "string",
        "phrases": "sequence<glip_ros/PhraseSpan>",
        "active": "boolean",
    }
    assert fields(GroundingResult) == {
        "header": "std_msgs/Header",
        "camera": "string",
        "query_id": "uint32",
        "detections": "vision_msgs/Detection2DArray",
        "phrase_indices": "sequence<uint32>",
    }
    assert fields(SetQuery.Request) == {"query": "string", "phrases": "sequence<string>"}
    assert fields(SetQuery.Response) == {
        "success": "boolean",
        "message": "string",
        "query_id": "uint32",
        "phrases": "sequence<string>",
    }
    assert fields(Ground.Request) == {
        "query": "string",
        "camera": "string",
        "use_image": "boolean",
        "image": "sensor_msgs/Image",
        "score_threshold": "float",
    }
    assert fields(Ground.Response) == {
        "success": "boolean",
        "message": "string",
        "query_id": "uint32",
        "detections": "vision_msgs/Detection2DArray",
        "phrases": "sequence<string>",
    }


def _vision_msgs_share() -> Path | None:
    prefixes = [sys.prefix, *os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)]
    for prefix in filter(None, prefixes):
        share = Path(prefix, "share", "vision_msgs")
        if (share / "msg" / "Detection2DArray.json").is_file():
            return share
    return None


def test_vision_msgs_type_hash_matches_upstream():
    share = _vision_msgs_share()
    if share is None:
        pytest.skip("no share/vision_msgs/msg/Detection2DArray.json in sys.prefix or AMENT_PREFIX_PATH")
    description = json.loads((share / "msg" / "Detection2DArray.json").read_text())
    hashes = {h["type_name"]: h["hash_string"] for h in description["type_hashes"]}
    assert hashes["vision_msgs/msg/Detection2DArray"] == DETECTION2DARRAY_HASH


@pytest.mark.ros
def test_grounding_result_round_trip_and_hash_on_the_wire():
    """Publish and receive our own message in one process; the graph reports the upstream type hash."""
    rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: run scripts/setup.sh")
    from glip_ros.msg import GroundingResult
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("glip_ros_test_setup", context=context)
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        received: list[GroundingResult] = []
        node.create_subscription(GroundingResult, "test_setup/result", received.append, qos)
        pub = node.create_publisher(GroundingResult, "test_setup/result", qos)
        det_pub = node.create_publisher(Detection2DArray, "test_setup/detections", qos)

        msg = GroundingResult(camera="front", query_id=7, phrase_indices=[1])
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = "red cup"
        hyp.hypothesis.score = 0.9
        det = Detection2D(results=[hyp])
        det.bbox.center.position.x = 40.0
        msg.detections.detections.append(det)

        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 10.0
        while not received and time.monotonic() < deadline:
            pub.publish(msg)
            executor.spin_once(timeout_sec=0.1)
        assert received, "no GroundingResult came back within 10 s"
        got = received[0]
        assert (got.camera, got.query_id, list(got.phrase_indices)) == ("front", 7, [1])
        assert got.detections.detections[0].results[0].hypothesis.class_id == "red cup"

        infos = node.get_publishers_info_by_topic("/test_setup/detections")
        assert [str(i.topic_type_hash) for i in infos] == [DETECTION2DARRAY_HASH]
        node.destroy_publisher(det_pub)
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
