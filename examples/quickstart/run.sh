#!/usr/bin/env bash
# The quickstart: the whole product at a tiny scale, on text shipped in the repo, CPU-capable.
#   bash examples/quickstart/run.sh [--gpus N] [--small]
#  1. corpus, tokenizer and local lm-eval tasks from the repo's own text; .bin/.idx by data_tools
#  2. a tiny GPTNeoX teacher trained from scratch (tensor parallel over 2 processes)
#  3. the teacher converted to a hybrid: layer 1 → mamba1, layer 3 → mamba2, from attention
#  4. the student retrained target-guided and hybrid (CALD), validated on held-out text
#  5. teacher and students evaluated: held-out perplexity and lm-eval on local tasks
#  6. the hybrid student exported to transformers, loaded by it and generating text
#  7. a comparison table (OUT/report.md) and the loss curves (OUT/<run>.png)
# On CPU it runs 2 gloo processes; --gpus N runs N processes on GPUs (nccl, bf16, mamba_ssm
# kernels). --small trains for fewer steps (what CI runs). OUT (default output/quickstart) is
# made anew on each run.
set -euo pipefail
source "$(dirname "$0")/../env.sh"  # REPO, PY; paths given are the caller's
OUT=${OUT:-output/quickstart}
GPUS=0 TEACHER=(train.num_train_epochs=4) STUDENT=(train.num_train_epochs=2)
while [[ $# -gt 0 ]]; do
  case $1 in
    --gpus) GPUS=${2:?--gpus needs a number}; shift 2 ;;
    --small) TEACHER=(train.max_steps=120) STUDENT=(train.max_steps=80); shift ;;
    *) echo "unknown argument $1; expected --gpus N or --small" >&2; exit 2 ;;
  esac
done
[[ $GPUS =~ ^[0-9]+$ ]] || { echo "--gpus $GPUS: expected a number of GPUs" >&2; exit 2; }
if [[ $GPUS -gt 0 ]]; then
  visible=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  if [[ $visible -lt $GPUS ]]; then
    echo "--gpus $GPUS: torch sees $visible GPU(s) here; leave --gpus out to run on the CPU" >&2
    exit 2
  fi
  NPROC=$GPUS TP=$((GPUS % 2 == 0 ? 2 : 1)) PRECISION=bf16 DEVICE=cuda
else
  NPROC=2 TP=2 PRECISION=no DEVICE=cpu
fi
if [[ -e $OUT && ! -f $OUT/.quickstart ]]; then
  echo "$OUT exists and is not a quickstart output; set OUT to another directory" >&2
  exit 2
fi
rm -rf "$OUT" && mkdir -p "$OUT" && touch "$OUT/.quickstart"
IN=$OUT/inputs
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
step() { echo -e "\n=== [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }

step "1. corpus, tokenizer and lm-eval tasks from the repo's text"
"$PY" "$REPO/examples/quickstart/prepare.py" "$IN" | grep -v "^$"
for part in train held_out; do
  "$PY" "$REPO/data_tools/preprocess_data.py" --input "$IN/$part.jsonl" --tokenizer "$IN/tokenizer" \
    --output-prefix "$IN/$part" 2> >(grep -v batches >&2)
done

train() {  # train CONFIG key=value ...
  "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m megatron_mamba.train \
    --config "$REPO/examples/quickstart/$1.yaml" "${@:2}" parallel.tensor="$TP" \
    train.output_dir="$OUT" train.mixed_precision="$PRECISION" data.path="$IN/train" \
    data.tokenizer="$IN/tokenizer" data.valid_path="$IN/held_out" train.eval_interval=50
}

step "2. the teacher: a tiny GPTNeoX trained from scratch (TP=$TP over $NPROC processes)"
train teacher "${TEACHER[@]}"

step "3. the hybrid student: the teacher with layers 1 and 3 swapped for mamba1 and mamba2"
"$PY" "$REPO/tools/swap_layers.py" "$OUT/teacher" "$OUT/converted" --layer-pattern AMAS \
  --mamba layout=attention --mamba init=attention

step "4. the student retrained: target-guided, and hybrid (guided for the first 40% of steps)"
for mode in target_guided hybrid; do
  until=null && [[ $mode == hybrid ]] && until=0.4
  train student train.run_name="$mode" train.init_from="$OUT/converted" \
    distill.teacher="$OUT/teacher" distill.layer_distill_until="$until" "${STUDENT[@]}"
done

MODELS=(teacher converted target_guided hybrid)
step "5. evaluation: held-out perplexity, then lm-eval on the local tasks"
paths=() && for name in "${MODELS[@]}"; do paths+=("$OUT/$name"); done
"$PY" "$REPO/eval/perplexity.py" --checkpoint "${paths[@]}" --data "$IN/held_out" --seq_length 64 \
  --output "$OUT/eval/perplexity.jsonl"
"$PY" "$REPO/eval/run_lm_evals.py" "${paths[@]}" --names "${MODELS[@]}" \
  --tasks quickstart_mc,quickstart_ppl --include_path "$IN/tasks" --tokenizer "$IN/tokenizer" \
  --dtype float32 --device "$DEVICE" --output_dir "$OUT/eval" > "$OUT/eval/lm_eval.log" 2>&1 \
  || { tail -20 "$OUT/eval/lm_eval.log" >&2; exit 1; }

step "6. the hybrid student exported to transformers and generating"
"$PY" "$REPO/tools/convert_native_to_hf.py" "$OUT/hybrid" "$OUT/hybrid-hf" --tokenizer "$IN/tokenizer"
"$PY" "$REPO/examples/quickstart/generate.py" "$OUT/hybrid-hf"

step "7. comparison and loss curves"
"$PY" "$REPO/examples/quickstart/report.py" "$OUT" "${MODELS[@]}"
echo "done in $((SECONDS / 60))m$((SECONDS % 60))s; everything is in $OUT"
