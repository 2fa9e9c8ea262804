#!/usr/bin/env bash
# The whole GPU measurement in one call (about 5 minutes on an H200): GLIP-T at 800x1333, random weights,
# fp32 official-style vs cached (bf16 backbone; head in fp32, TF32 or bf16; CUDA graphs on and off), 1 and 4
# cameras, 3 and 1,203 phrases; GLIP-T (A) likewise. One run failing does not stop the others.
# Usage: bash scripts/gpu_bench.sh [OUTDIR]   (needs torch with CUDA, transformers, safetensors, pillow)
#        ONLY="t_fp32_3p_1cam t_bf16_3p_1cam" bash scripts/gpu_bench.sh   (a subset of the runs below)
# Writes one JSON per run and all.json (all runs together) to OUTDIR.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/gpu_bench}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | sed 's/^/commit /' | tee -a "$OUT/gpu.txt" || true
run() {
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  echo "== $name: glip-bench $*"
  timeout "${RUN_TIMEOUT:-150}" "$PY" -m glip_ros.bench "$@" --json "$OUT/$name.json" || echo "!! $name failed (rc $?)"
  echo
}
S="--preset glip_t --size 800x1333 --device cuda"
run smoke_tiny --preset glip_tiny_test --device cuda --runs 3 --skip-official
run t_fp32_3p_1cam $S --precision fp32 --phrases 3 --cameras 1 --runs 20 --flops
run t_bf16_3p_1cam $S --precision bf16 --phrases 3 --cameras 1 --runs 20
run t_bf16tf32_3p_1cam $S --precision bf16 --head-precision tf32 --phrases 3 --cameras 1 --runs 20 --profile 15
run t_bf16auto_3p_1cam $S --precision bf16 --head-precision auto --phrases 3 --cameras 1 --runs 20
run t_bf16tf32_3p_1cam_eager $S --precision bf16 --head-precision tf32 --phrases 3 --runs 20 --no-cuda-graphs --skip-official
run t_bf16tf32_3p_4cam $S --precision bf16 --head-precision tf32 --phrases 3 --cameras 4 --runs 10
run t_bf16_1203p_1cam $S --precision bf16 --phrases 1203 --cameras 1 --runs 5 --chunk-batch 16 --skip-official
run t_bf16tf32_1203p_1cam $S --precision bf16 --head-precision tf32 --phrases 1203 --runs 5 --chunk-batch 16 --skip-official
run t_bf16auto_1203p_1cam $S --precision bf16 --head-precision auto --phrases 1203 --runs 5 --chunk-batch 16 --profile 12
A="--preset glip_t_a --size 800x1333 --device cuda --precision bf16 --head-precision tf32"
run ta_bf16tf32_1203p_1cam $A --phrases 1203 --cameras 1 --runs 10
run ta_bf16tf32_3p_1cam $A --phrases 3 --cameras 1 --runs 20
"$PY" - "$OUT" <<'PYEOF'
import glob, json, os, sys
runs = {os.path.basename(f)[:-5]: json.load(open(f))
        for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))) if not f.endswith("all.json")}
json.dump(runs, open(os.path.join(sys.argv[1], "all.json"), "w"), indent=1)
for name, r in runs.items():
    c = r["cached"]
    o = r.get("official", {}).get("end_to_end", {}).get("median_ms")
    print(f"{name:26s} cached {c['end_to_end']['median_ms']:7.1f} ms {c['frames_per_s']:6.2f} f/s"
          f" | bb {c['backbone']['median_ms']:.1f} head {c['head']['median_ms']:.1f} post {c['postprocess']['median_ms']:.1f}"
          + (f" | official {o:.1f} ms x{r['speedup']:.2f}" if o else "")
          + f" | graphs {r.get('graph_counters')} vs-eager {r.get('graphs_vs_eager_top20')} vs-off {r.get('cached_vs_official_top20')}")
PYEOF
