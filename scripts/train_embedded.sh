#!/usr/bin/env bash
# Reproduce the embedded default model (glip_ros/weights/glip_synth_tiny.safetensors):
#   (a) generate the evaluation/few-shot data, (b) train (the training scenes are rendered on the fly from the
#   same seeded generator), (c) evaluate (AP/AP50 on val, grounding recall, held-out colour+shape combos),
#   (d) optionally the few-shot / prompt-tuning table (--fewshot).
#
#   scripts/train_embedded.sh --reproduce --device cuda --out out/chain
#                              # the shipped file's recipe: the 5 chained stages of configs/train/embedded_chain.yaml
#                              # (stage 1 on a GPU, stages 2-5 were CPU runs; --device sets all of them)
#   scripts/train_embedded.sh --reproduce --smoke --out out/smoke
#                              # check mode: every stage of the chain for 2 steps, 4-image evaluation (~20 s CPU)
#   scripts/train_embedded.sh                      # one from-scratch run on 2 CPU cores: configs/train/embedded_cpu.yaml
#   scripts/train_embedded.sh --device cuda        # one from-scratch run on a GPU:      configs/train/embedded_gpu.yaml
#   scripts/train_embedded.sh --skip-train --fewshot --seeds 0,1 --out DIR
#                              # evaluate DIR/glip_synth_tiny.safetensors and make the few-shot table (2 seeds)
#
# Other options: --data DIR (evaluation data, default out/synth), --threads N (CPU threads for training and
# evaluation; default: each config's, 2 for evaluation). Extra key=value arguments go to the single-run training.
# Writes <out>/glip_synth_tiny.safetensors (fp16) and <out>/metrics/*.json. Install the file as the default
# model with: cp <out>/glip_synth_tiny.safetensors glip_ros/weights/
set -euo pipefail
DEVICE=cpu
OUT=out/embedded
DATA=out/synth
DATA_SET=0
FEWSHOT=0
SKIP_TRAIN=0
REPRODUCE=0
SMOKE=0
THREADS=""
SEEDS=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --data) DATA="$2"; DATA_SET=1; shift 2 ;;
    --fewshot) FEWSHOT=1; shift ;;
    --skip-train) SKIP_TRAIN=1; shift ;;
    --reproduce) REPRODUCE=1; shift ;;
    --smoke) SMOKE=1; shift ;;
    --threads) THREADS="$2"; shift 2 ;;
    --seeds) SEEDS="$2"; shift 2 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
if [[ $SMOKE == 1 && $REPRODUCE == 0 ]]; then echo "--smoke goes with --reproduce" >&2; exit 2; fi
if [[ $SMOKE == 1 && $FEWSHOT == 1 ]]; then echo "--smoke does not run the few-shot table" >&2; exit 2; fi
if [[ $REPRODUCE == 1 && ${#EXTRA[@]} -gt 0 ]]; then
  echo "--reproduce runs the recorded stages as they are; unexpected arguments: ${EXTRA[*]}" >&2; exit 2
fi
PY=${PYTHON:-python}
if [[ -x .venv/bin/python && -z "${PYTHON:-}" ]]; then PY=.venv/bin/python; fi
CONFIG=configs/train/embedded_cpu.yaml
[[ "$DEVICE" == cuda* ]] && CONFIG=configs/train/embedded_gpu.yaml
CKPT="$OUT/glip_synth_tiny.safetensors"
M="$OUT/metrics"
mkdir -p "$M"
TRAIN_THREADS=()
EVAL_THREADS=()
if [[ -n "$THREADS" ]]; then TRAIN_THREADS=("threads=$THREADS"); EVAL_THREADS=(--threads "$THREADS"); fi

LIMIT=()
if [[ $SMOKE == 1 ]]; then
  [[ $DATA_SET == 1 ]] || DATA="$OUT/data"
  echo "== (a) smoke data -> $DATA"
  [[ -f "$DATA/val.json" ]] || $PY -m glip_ros.train.cli generate --out "$DATA" --train 0 --val 4 --heldout 0 \
    --fewshot-train 0 --fewshot-val 0 --seed 0
  LIMIT=(--limit 4)
else
  echo "== (a) data -> $DATA"
  [[ -f "$DATA/fewshot_val.json" ]] || $PY -m glip_ros.train.cli generate --out "$DATA" --train 0 --val 300 \
    --heldout 200 --fewshot-train 40 --fewshot-val 150 --seed 0
fi

if [[ $REPRODUCE == 1 ]]; then
  echo "== (b) train: the chain of configs/train/embedded_chain.yaml ($DEVICE)"
  RARGS=(--out "$OUT" --device "$DEVICE")
  [[ -n "$THREADS" ]] && RARGS+=(--threads "$THREADS")
  [[ $SMOKE == 1 ]] && RARGS+=(--smoke)
  $PY -m glip_ros.train.reproduce "${RARGS[@]}"
elif [[ $SKIP_TRAIN == 0 ]]; then
  echo "== (b) train ($CONFIG, $DEVICE)"
  $PY -m glip_ros.train.cli --config "$CONFIG" --device "$DEVICE" --out-dir "$OUT/pretrain" --export "$CKPT" \
    resume=false ${TRAIN_THREADS[@]+"${TRAIN_THREADS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
fi

echo "== (c) evaluate $CKPT"
EV=($PY -m glip_ros.train.cli_eval --checkpoint "$CKPT" --device "$DEVICE" ${EVAL_THREADS[@]+"${EVAL_THREADS[@]}"})
"${EV[@]}" --data "$DATA/val.json" --task coco ${LIMIT[@]+"${LIMIT[@]}"} --out "$M/val_coco.json"
"${EV[@]}" --data "$DATA/val.json" --task grounding ${LIMIT[@]+"${LIMIT[@]}"} --out "$M/val_grounding.json"
if [[ $SMOKE == 0 ]]; then
  "${EV[@]}" --data "$DATA/heldout_combos.json" --task coco --out "$M/heldout_combos.json"
  # Baseline for the held-out combinations: the shape name alone (what a colour-blind model scores).
  "${EV[@]}" --data "$DATA/heldout_combos.json" --task coco --names triangle,circle,star \
    --out "$M/heldout_shape_only.json"
fi

if [[ $FEWSHOT == 1 ]]; then
  echo "== (d) few-shot on 'heart' (never in training), seeds $SEEDS"
  "${EV[@]}" --data "$DATA/fewshot_val.json" --task coco --out "$M/fewshot_zero_shot_s0.json"
  for SEED in ${SEEDS//,/ }; do
    COMMON=("model=$CKPT" "device=$DEVICE" "seed=$SEED" "data.json=$DATA/fewshot_train.json"
      ${TRAIN_THREADS[@]+"${TRAIN_THREADS[@]}"})
    for K in 1 5 10; do
      $PY -m glip_ros.train.cli --config configs/train/fewshot.yaml kshot=$K "${COMMON[@]}" \
        "out_dir=$OUT/fewshot/full_k${K}_s$SEED"
      $PY -m glip_ros.train.cli_eval --checkpoint "$OUT/fewshot/full_k${K}_s$SEED/model.safetensors" \
        --device "$DEVICE" ${EVAL_THREADS[@]+"${EVAL_THREADS[@]}"} --data "$DATA/fewshot_val.json" --task coco \
        --out "$M/fewshot_full_k${K}_s$SEED.json"
    done
    $PY -m glip_ros.train.cli --config configs/train/prompt_tuning.yaml "${COMMON[@]}" \
      "out_dir=$OUT/fewshot/prompt_k10_s$SEED"
    $PY -m glip_ros.train.cli_eval --checkpoint "$OUT/fewshot/prompt_k10_s$SEED/model.safetensors" \
      --device "$DEVICE" ${EVAL_THREADS[@]+"${EVAL_THREADS[@]}"} --data "$DATA/fewshot_val.json" --task coco \
      --out "$M/fewshot_prompt_k10_s$SEED.json"
  done
  echo "== few-shot table ($M/fewshot_table.md)"
  $PY -m glip_ros.train.reproduce fewshot-table "$M" | tee "$M/fewshot_table.md"
fi
echo "== done: $CKPT, metrics in $M"
