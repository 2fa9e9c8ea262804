#!/usr/bin/env bash
# The project's test command; README and .ci/run both call this one. Extra arguments go to pytest:
#   bash scripts/test.sh                 default suite (slow and gpu tests skipped)
#   bash scripts/test.sh -m slow         only the slow tests
#   bash scripts/test.sh test/model -x   a folder, stop at the first failure
# Needs the venv from scripts/setup.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ -x .venv/bin/python ] || { echo "test.sh: no .venv; run: bash scripts/setup.sh" >&2; exit 2; }

# Fixtures (reduced GLIP weights, reference tensors, test image). Tests that need them skip with a
# reason when the folder is absent.
export GLIP_SHARED_DIR="${GLIP_SHARED_DIR:-$ROOT/../shared}"
# ROS: Fast DDS, discovery kept on this machine, and a ROS domain no other test run here is using, so
# two runs at once (two clones, or a developer and CI) never see each other's nodes.
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
if [ -z "${ROS_DOMAIN_ID:-}" ]; then
  # Claim a free domain id in 1..101 with a lock folder; a lock whose owner has exited is taken over.
  start=$(( $$ % 101 ))
  for i in $(seq 0 100); do
    id=$(( (start + i) % 101 + 1 ))
    lock="/tmp/glip_ros_domain_$id.lock"
    if mkdir "$lock" 2>/dev/null \
       || { owner=$(cat "$lock/pid" 2>/dev/null || true); [ -n "$owner" ] && ! kill -0 "$owner" 2>/dev/null; }; then
      echo $$ > "$lock/pid"
      export ROS_DOMAIN_ID=$id
      trap 'rm -rf "$lock"' EXIT
      break
    fi
  done
  [ -n "${ROS_DOMAIN_ID:-}" ] || { echo "test.sh: no free ROS domain id (locks in /tmp/glip_ros_domain_*)" >&2; exit 2; }
fi
# No downloads at test time: a test that would fetch from a model hub fails fast instead.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"

if [ -n "${PYTHONPATH:-}" ]; then
  echo "test.sh: warning: PYTHONPATH is set ($PYTHONPATH); a sourced system ROS mixes with the venv's" >&2
fi
echo "test.sh: ROS_DOMAIN_ID=$ROS_DOMAIN_ID GLIP_SHARED_DIR=$GLIP_SHARED_DIR"
# Not exec: the trap above releases the domain lock when pytest ends. Without path arguments pytest
# collects `testpaths` (test/) from pyproject.toml.
.venv/bin/python -m pytest -q "$@"
