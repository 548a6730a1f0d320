#!/usr/bin/env bash
# Stage 1: progressive hybrid distillation of Zephyr (MambaInLlama). 25% of the attention layers
# become Mamba (initialised from attention) and only they train; then another 25%, starting from
# the first stage's weights. STEPWISE=1 instead adds one Mamba layer per stage (even layers from
# the bottom first, then 1, 5, 9, …, then 3, 11, …: MambaInLlama's order) up to STEPS layers,
# stage k training on the k-th of SLICES (32) slices of the pseudo-labels, as its
# train_hybrid_step.py does.
#   NPROC=8 bash examples/zephyr/progressive.sh [--tiny] [key=value ...]
source "$(dirname "$0")/common.sh"
teacher
stage() {  # stage NAME INIT
  train distill train.run_name="$1" train.init_from="$2" distill.teacher="$OUT/teacher" \
    data.path="$PSEUDO_LABELS" "${@:3}"
}
if [[ ${STEPWISE:-0} == 1 ]]; then
  previous="" slices=${SLICES:-32}
  slice=$(($(grep -c . "$PSEUDO_LABELS") / slices))
  for ((k = 1; k <= ${STEPS:-$((LAYERS / 2))}; k++)); do
    p=$("$PY" -m megatron_mamba.convert.progressive --layers "$LAYERS" --symbol "$MIXER" --stepwise "$k")
    init=$OUT/init_step_$k
    if [[ -z $previous ]]; then
      [[ -d $init ]] || "$PY" tools/convert_hf_to_native.py "$ZEPHYR" "$init" --layer-pattern "$p" "${MAMBA[@]}"
    else
      [[ -d $init ]] || "$PY" tools/swap_layers.py "$previous" "$init" --layer-pattern "$p" "${MAMBA[@]}"
    fi
    stage "zephyr_step_$k" "$init" train.max_train_samples="$slice" \
      data.first_item=$(((k - 1) % slices * slice)) "$@"
    previous=$OUT/zephyr_step_$k
  done
  exit 0
fi
from_zephyr 0.25 "$OUT/init_0.25"
stage zephyr_0.25_mamba "$OUT/init_0.25" "$@"
swapped "$OUT/zephyr_0.25_mamba" 0.5 "$OUT/init_0.50"
stage zephyr_0.50_mamba "$OUT/init_0.50" "$@"
