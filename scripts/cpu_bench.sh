#!/usr/bin/env bash
# The CPU measurements of docs/BENCHMARKS.md: small presets at 480x640, cached vs official-style,
# 3 vs 1,203 phrases, with and without deep fusion, 3 cameras batched vs one at a time, glibc malloc policy
# (tiny and GLIP-T), bf16 Swin + FPN on the CPU (GLIP-T), torch.compile.
# Usage: bash scripts/cpu_bench.sh [OUTDIR] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/cpu_bench}
THREADS=${2:-0}
mkdir -p "$OUT"
PY=${PYTHON:-.venv/bin/python}
run() { local name=$1; shift; echo "== $name: glip-bench $*"; "$PY" -m glip_ros.bench "$@" --threads "$THREADS" --json "$OUT/$name.json"; echo; }
S="--size 480x640 --device cpu --precision fp32"
run tiny_3p       --preset glip_tiny_test   $S --phrases 3    --runs 10 --flops --count-ops
run tiny_1203p    --preset glip_tiny_test   $S --phrases 1203 --runs 3
run tinya_3p      --preset glip_tiny_test_a $S --phrases 3    --runs 10 --flops --count-ops
run tinya_1203p   --preset glip_tiny_test_a $S --phrases 1203 --runs 3
run tiny_3p_3cam  --preset glip_tiny_test   $S --phrases 3    --cameras 3 --runs 5
# glibc's own malloc policy (large blocks unmapped at every free) against --malloc keep (the default above)
run tiny_3p_malloc_default --preset glip_tiny_test $S --phrases 3 --runs 10 --malloc default
# GLIP-T itself at 480x640: fp32 (with the official-style path), glibc's malloc policy, bf16 Swin + FPN
run glipt_3p      --preset glip_t $S --phrases 3 --runs 4
run glipt_3p_malloc_default --preset glip_t $S --phrases 3 --runs 4 --skip-official --malloc default
run glipt_3p_bf16 --preset glip_t --size 480x640 --device cpu --precision bf16 --phrases 3 --runs 4 --skip-official
# ... and the head in bf16 too (head_precision auto), with the official-style path and its top-20 check
run glipt_3p_bf16_head --preset glip_t --size 480x640 --device cpu --precision bf16 --head-precision auto --phrases 3 --runs 4
# torch.compile of everything (the first call compiles: about a minute without inductor's on-disk cache)
run tiny_3p_compile --preset glip_tiny_test $S --phrases 3 --runs 10 --compile all --skip-official
