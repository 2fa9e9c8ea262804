"""The launch files, params file, rviz config and docs agree with the code, checked without launch_ros.

launch/launch_ros cannot be installed on pip-only machines, so the launch files are checked statically: they
parse, every executable they start exists (script + module + main), every parameter they set is one the
started node declares, every config file they name exists, and config/glip.yaml holds exactly the node's
parameters with their defaults. glip-demo must start the same graph as sim_demo.launch.py.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
from typing import Any

import pytest
import yaml

from glip_ros.ros.params import PARAMETERS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH_FILES = ["launch/glip.launch.py", "launch/sim_demo.launch.py"]
STANDARD_PARAMS = {"use_sim_time"}  # declared by every rclpy node
EXECUTABLE_MODULES = {
    "glip_node": "glip_ros.ros.node",
    "synthetic_camera": "glip_ros.ros.synthetic_camera",
    "glip_scripted_queries": "glip_ros.ros.scripted_queries",
}


def _read(rel: str) -> str:
    with open(os.path.join(REPO, rel)) as f:
        return f.read()


def _const(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _nodes(tree: ast.AST) -> list[dict[str, Any]]:
    """Every ``Node(...)`` call: its constant keywords, parameter-dict keys, remaps and config file names."""
    out = []
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node"):
            continue
        info: dict[str, Any] = {"params": set(), "remaps": [], "files": []}
        for kw in call.keywords:
            if kw.arg in ("package", "executable", "name"):
                info[kw.arg] = _const(kw.value)
            elif kw.arg == "parameters":
                for item in getattr(kw.value, "elts", []):
                    if isinstance(item, ast.Dict):
                        info["params"] |= {_const(k) for k in item.keys}
            elif kw.arg == "remappings":
                info["remaps"] = [_const(e.elts[0]) for e in kw.value.elts]
        out.append(info)
    return out


def _overrides(tree: ast.Module) -> set[str]:
    """Keys of a module-level ``OVERRIDES`` dict: parameters a launch file lays over its params file."""
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(getattr(t, "id", None) == "OVERRIDES" for t in stmt.targets):
            assert isinstance(stmt.value, ast.Dict)
            return {_const(k) for k in stmt.value.keys}
    return set()


def _launch_defaults(tree: ast.AST) -> dict[str, Any]:
    """Launch argument name -> its constant default_value (None where not a constant)."""
    out = {}
    for c in ast.walk(tree):
        if isinstance(c, ast.Call) and getattr(c.func, "id", None) == "DeclareLaunchArgument":
            default = next((kw.value for kw in c.keywords if kw.arg == "default_value"), None)
            out[_const(c.args[0])] = None if default is None else _const(default)
    return out


def _config_files(tree: ast.AST) -> list[str]:
    """Files named as os.path.join(share, "config", "<file>")."""
    files = []
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "join":
            parts = [_const(a) for a in call.args[1:]]
            if parts and all(isinstance(p, str) for p in parts):
                files.append(os.path.join(*parts))
    return files


def _declared(module: str) -> set[str]:
    """Parameter names a module declares (glip_node: PARAMETERS; others: their declare_parameter calls)."""
    if module == "glip_ros.ros.node":
        return {p.name for p in PARAMETERS}
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin
    with open(spec.origin) as f:
        tree = ast.parse(f.read())
    return {
        _const(c.args[0])
        for c in ast.walk(tree)
        if isinstance(c, ast.Call) and getattr(c.func, "attr", None) == "declare_parameter"
    }


@pytest.mark.parametrize("rel", LAUNCH_FILES)
def test_launch_file_parses_and_names_only_things_that_exist(rel: str) -> None:
    tree = ast.parse(_read(rel), filename=rel)
    assert any(isinstance(f, ast.FunctionDef) and f.name == "generate_launch_description" for f in tree.body)
    nodes = _nodes(tree)
    assert nodes, "no Node actions"
    for n in nodes:
        if n.get("package") != "glip_ros":
            assert (n.get("package"), n.get("executable")) == ("rviz2", "rviz2"), n
            continue
        exe = n["executable"]
        assert exe in EXECUTABLE_MODULES, f"{rel}: unknown executable {exe!r}"
        script = os.path.join(REPO, "scripts", exe)
        assert os.path.isfile(script) and os.access(script, os.X_OK), f"scripts/{exe} missing/not executable"
        module = EXECUTABLE_MODULES[exe]
        assert f"from {module} import main" in _read(f"scripts/{exe}")
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, module
        with open(spec.origin) as f:
            assert "def main(" in f.read()
        unknown = (n["params"] | _overrides(tree)) - _declared(module) - STANDARD_PARAMS
        assert not unknown, f"{rel}: {exe} is given undeclared parameters {unknown}"
    for f in _config_files(tree):
        assert os.path.isfile(os.path.join(REPO, f)), f"{rel} names {f}, which does not exist"


@pytest.mark.parametrize("exe", sorted(EXECUTABLE_MODULES))
def test_cmake_installs_the_executables(exe: str) -> None:
    cmake = _read("CMakeLists.txt")
    if not re.search(rf"install\s*\(\s*PROGRAMS[^)]*scripts/{exe}\b", cmake):
        pytest.xfail(f"CMakeLists.txt does not install scripts/{exe} yet (needed by the launch files)")


def test_glip_launch_arguments_and_remap() -> None:
    tree = ast.parse(_read("launch/glip.launch.py"))
    declared = {
        _const(c.args[0])
        for c in ast.walk(tree)
        if isinstance(c, ast.Call) and getattr(c.func, "id", None) == "DeclareLaunchArgument"
    }
    assert {"image", "query", "params_file", "use_sim_time"} <= declared
    (node,) = _nodes(tree)
    assert node["remaps"] == ["image"]
    overrides = _overrides(tree)
    assert {"query", "checkpoint", "device", "use_sim_time"} <= overrides
    # An override given by default would replace the params file's value of it whatever the file says.
    defaults = _launch_defaults(tree)
    assert all(defaults.get(name) == "" for name in overrides), defaults
    assert not node["params"] & overrides
    assert "config/glip.yaml" in _config_files(tree)


def test_params_file_holds_exactly_the_declared_parameters_with_their_defaults() -> None:
    params = yaml.safe_load(_read("config/glip.yaml"))["glip_node"]["ros__parameters"]
    names = [p.name for p in PARAMETERS]
    assert len(names) == len(set(names))
    assert set(params) == set(names) | STANDARD_PARAMS
    for p in PARAMETERS:
        value = params[p.name]
        if isinstance(p.default, list):
            value = list(value)
        assert value == p.default and type(value) is type(p.default), (p.name, value, p.default)
    text = _read("config/glip.yaml")
    for p in PARAMETERS:  # every parameter is commented (the comment line right above it)
        lines = text.splitlines()
        i = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{p.name}:"))
        assert lines[i - 1].strip().startswith("#"), f"{p.name} has no comment"


def test_parameter_table_is_consistent() -> None:
    for p in PARAMETERS:
        assert p.description and p.applies in ("live", "activate", "configure", "startup"), p.name
        if p.choices:
            assert p.default in p.choices, p.name
        if p.int_range:
            assert p.int_range[0] <= p.default <= p.int_range[1], p.name
        if p.float_range:
            assert p.float_range[0] <= p.default <= p.float_range[1], p.name
    code = {p.name for p in PARAMETERS if p.applies == "configure"}
    assert {"checkpoint", "preset", "device", "precision"} <= code


def test_interfaces_doc_lists_every_parameter_and_interface() -> None:
    doc = _read("docs/INTERFACES.md")
    for p in PARAMETERS:
        assert f"`{p.name}`" in doc, f"docs/INTERFACES.md does not document parameter {p.name}"
    for name in [
        "image",
        "image/compressed",
        "query",
        "detections",
        "grounding",
        "debug_image",
        "query_state",
        "/diagnostics",
        "~/set_query",
        "~/ground",
        "ROS_SECURITY_KEYSTORE",
        "--enclave",
        "LARGE_DATA",
    ]:
        assert f"`{name}`" in doc or name in doc, f"docs/INTERFACES.md does not mention {name}"


def test_rviz_config_shows_the_debug_image() -> None:
    cfg = yaml.safe_load(_read("config/glip.rviz"))
    topics = {d["Topic"]["Value"] for d in cfg["Visualization Manager"]["Displays"] if "Topic" in d}
    assert "/debug_image" in topics


def test_demo_starts_the_same_graph_as_sim_demo_launch(tmp_path) -> None:
    from glip_ros.ros.demo import build_commands

    launched = {n["executable"] for n in _nodes(ast.parse(_read("launch/sim_demo.launch.py")))}
    args = argparse.Namespace(
        checkpoint="",
        preset="",
        device="cpu",
        score_threshold=0.5,
        min_size=None,
        queries=["a", ""],
        duration=4.0,
        out=str(tmp_path),
        wait_timeout=10.0,
        rate=5.0,
        width=64,
        height=48,
    )
    cmds = build_commands(args, str(tmp_path))
    assert set(cmds) == launched - {"rviz2"}
    for exe, cmd in cmds.items():
        assert cmd[1:3] == ["-m", EXECUTABLE_MODULES[exe]]
    script_params = yaml.safe_load((tmp_path / "scripted_queries.yaml").read_text())
    assert script_params["glip_scripted_queries"]["ros__parameters"]["queries"] == ["a", ""]
