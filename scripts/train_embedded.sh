#!/usr/bin/env bash
# Reproduce the embedded default model (glip_ros/weights/glip_synth_tiny.safetensors) end to end:
#   (a) generate the evaluation/few-shot data, (b) train (the training scenes are rendered on the fly from the
#   same seeded generator), (c) evaluate (AP/AP50 on val, grounding recall, held-out colour+shape combos),
#   (d) optionally the few-shot / prompt-tuning table (--fewshot).
#
#   scripts/train_embedded.sh                      # 2 CPU cores: configs/train/embedded_cpu.yaml
#   scripts/train_embedded.sh --device cuda        # one GPU:     configs/train/embedded_gpu.yaml
#   scripts/train_embedded.sh --device cuda --fewshot --out out/embedded extra_key=value ...
#
# Writes <out>/glip_synth_tiny.safetensors (fp16) and <out>/metrics/*.json. Install the file as the default
# model with: cp <out>/glip_synth_tiny.safetensors glip_ros/weights/
set -euo pipefail
DEVICE=cpu
OUT=out/embedded
DATA=out/synth
FEWSHOT=0
SKIP_TRAIN=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --fewshot) FEWSHOT=1; shift ;;
    --skip-train) SKIP_TRAIN=1; shift ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
PY=${PYTHON:-python}
if [[ -x .venv/bin/python && -z "${PYTHON:-}" ]]; then PY=.venv/bin/python; fi
CONFIG=configs/train/embedded_cpu.yaml
[[ "$DEVICE" == cuda* ]] && CONFIG=configs/train/embedded_gpu.yaml
CKPT="$OUT/glip_synth_tiny.safetensors"
M="$OUT/metrics"
mkdir -p "$M"

echo "== (a) data -> $DATA"
[[ -f "$DATA/fewshot_val.json" ]] || $PY -m glip_ros.train.cli generate --out "$DATA" --train 0 --val 300 \
  --heldout 200 --fewshot-train 40 --fewshot-val 150 --seed 0

if [[ $SKIP_TRAIN == 0 ]]; then
  echo "== (b) train ($CONFIG, $DEVICE)"
  $PY -m glip_ros.train.cli --config "$CONFIG" --device "$DEVICE" --out-dir "$OUT/pretrain" --export "$CKPT" \
    resume=false "${EXTRA[@]}"
fi

echo "== (c) evaluate $CKPT"
EV="$PY -m glip_ros.train.cli_eval --checkpoint $CKPT --device $DEVICE"
$EV --data "$DATA/val.json" --task coco --out "$M/val_coco.json"
$EV --data "$DATA/val.json" --task grounding --out "$M/val_grounding.json"
$EV --data "$DATA/heldout_combos.json" --task coco --out "$M/heldout_combos.json"
# Baseline for the held-out combinations: the shape name alone (what a colour-blind model scores).
$EV --data "$DATA/heldout_combos.json" --task coco --names triangle,circle,star --out "$M/heldout_shape_only.json"

if [[ $FEWSHOT == 1 ]]; then
  echo "== (d) few-shot on 'heart' (never in training)"
  $EV --data "$DATA/fewshot_val.json" --task coco --out "$M/fewshot_zero_shot.json"
  DEVCFG="device=$DEVICE"
  for K in 1 5 10; do
    $PY -m glip_ros.train.cli --config configs/train/fewshot.yaml "model=$CKPT" kshot=$K "$DEVCFG" \
      "data.json=$DATA/fewshot_train.json" "out_dir=$OUT/fewshot/full_k$K"
    $PY -m glip_ros.train.cli_eval --checkpoint "$OUT/fewshot/full_k$K/model.safetensors" --device "$DEVICE" \
      --data "$DATA/fewshot_val.json" --task coco --out "$M/fewshot_full_k$K.json"
  done
  $PY -m glip_ros.train.cli --config configs/train/prompt_tuning.yaml "model=$CKPT" "$DEVCFG" \
    "data.json=$DATA/fewshot_train.json" "out_dir=$OUT/fewshot/prompt_k10"
  $PY -m glip_ros.train.cli_eval --checkpoint "$OUT/fewshot/prompt_k10/model.safetensors" --device "$DEVICE" \
    --data "$DATA/fewshot_val.json" --task coco --out "$M/fewshot_prompt_k10.json"
fi
echo "== done: $CKPT, metrics in $M"
