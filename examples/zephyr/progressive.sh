#!/usr/bin/env bash
# Stage 1: progressive hybrid distillation of Zephyr (MambaInLlama). 25% of the attention layers
# become Mamba (initialised from attention) and only they train; then another 25%, starting from
# the first stage's weights. STEPWISE=1 instead adds one Mamba layer per stage (even layers from
# the bottom first, then 1, 5, 9, …, then 3, 11, …: MambaInLlama's order) up to STEPS layers,
# stage k training on its slice of the pseudo-labels: the k-th of SLICES (32) chunks of each
# source in PSEUDO_LABELS, as its train_hybrid_step.py cuts them (data_tools/stage_slice.py).
# Runs: zephyr_0.25_mamba and zephyr_0.50_mamba (zephyr_step_K_mamba; mamba2 with MIXER=S).
#   NPROC=8 bash examples/zephyr/progressive.sh [--tiny] [key=value ...]
source "$(dirname "$0")/common.sh"
teacher
read -ra SOURCES <<< "$PSEUDO_LABELS"
stage() {  # stage NAME INIT DATA [key=value ...]
  train distill train.run_name="$1" train.init_from="$2" distill.teacher="$OUT/teacher" \
    data.path="$3" "${@:4}"
}
if [[ ${STEPWISE:-0} == 1 ]]; then
  previous="" slices=${SLICES:-32}
  for ((k = 1; k <= ${STEPS:-$((LAYERS / 2))}; k++)); do
    p=$("$PY" -m megatron_mamba.convert.progressive --layers "$LAYERS" --symbol "$MIXER" --stepwise "$k")
    init=$OUT/init_step_${k}_$KIND
    if [[ -z $previous ]]; then from_zephyr "$p" "$init"; else swapped "$previous" "$p" "$init"; fi
    data=$OUT/data/step_$k.jsonl
    "$PY" "$REPO/data_tools/stage_slice.py" "${SOURCES[@]}" --slices "$slices" \
      --index $(((k - 1) % slices + 1)) --output "$data"
    stage "zephyr_step_${k}_$KIND" "$init" "$data" "$@"
    previous=$OUT/zephyr_step_${k}_$KIND
  done
  exit 0
fi
data=${SOURCES[0]}
if ((${#SOURCES[@]} > 1)); then  # the sources one after another (the trainer shuffles)
  data=$OUT/data/pseudo_labels.jsonl
  "$PY" "$REPO/data_tools/stage_slice.py" "${SOURCES[@]}" --slices 1 --index 1 --output "$data"
fi
from_zephyr "$(pattern 0.25)" "$OUT/init_0.25_$KIND"
stage "zephyr_0.25_$KIND" "$OUT/init_0.25_$KIND" "$data" "$@"
swapped "$OUT/zephyr_0.25_$KIND" "$(pattern 0.5)" "$OUT/init_0.50_$KIND"
stage "zephyr_0.50_$KIND" "$OUT/init_0.50_$KIND" "$data" "$@"
