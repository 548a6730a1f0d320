#!/usr/bin/env bash
# CALD's comparison scaled down, on text assembled on this machine (nothing downloaded):
#  1. a corpus from the repo's text plus the docstrings and documents of this Python's standard
#     library and site-packages (MB megabytes per root, default 40); a BPE tokenizer; every tenth
#     paragraph held out
#  2. a Pythia-160m-shaped teacher trained from scratch for TEACHER_STEPS
#  3. its all-mamba1 student (CALD: every attention layer → mamba1, mixers fresh, the rest copied)
#     retrained unguided, target-guided and hybrid (guided for the first 40%), STUDENT_STEPS each,
#     so the three see the same tokens
#  4. held-out perplexity of the four models: OUT/report.md
# Step counts beyond one pass over the text cycle it (train.num_train_epochs is set high enough;
# max_steps decides the length).
#   bash examples/pythia/replication.sh [--gpus N] [--graphs] [--tiny]
# --gpus N: N data-parallel processes, bf16 (default 1); --graphs: train.cuda_graph=true (GPU;
# about 2× the tokens/s of this shape, docs/scaling.md); --tiny: a tiny shape on CPU, a smoke test.
set -euo pipefail
source "$(dirname "$0")/../env.sh"  # REPO, PY; paths given are the caller's
OUT=${OUT:-output/replication}
GPUS=1 SHAPE=pythia-160m VOCAB=8192 SEQ=1024 MICRO=8 MB=${MB:-40}
TEACHER_STEPS=${TEACHER_STEPS:-3000} STUDENT_STEPS=${STUDENT_STEPS:-1500} PRECISION=bf16
GRAPHS=false
while [[ $# -gt 0 ]]; do
  case $1 in
    --gpus) GPUS=${2:?--gpus needs a number}; shift 2 ;;
    --graphs) GRAPHS=true; shift ;;
    --tiny) GPUS=0 SHAPE=tiny-gpt-neox VOCAB=512 SEQ=64 MICRO=4 MB=0.2 PRECISION=no
            TEACHER_STEPS=40 STUDENT_STEPS=20; shift ;;
    *) echo "unknown argument $1; expected --gpus N, --graphs or --tiny" >&2; exit 2 ;;
  esac
done
NPROC=$((GPUS > 0 ? GPUS : 1))
IN=$OUT/inputs
mkdir -p "$OUT/eval"
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
step() { echo -e "\n=== [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }

step "1. corpus and tokenizer from this machine's text"
roots=$("$PY" -c 'import sysconfig as s; print(s.get_paths()["stdlib"], s.get_paths()["purelib"])')
text_roots=() && for root in $roots; do text_roots+=(--text-root "$root"); done
[[ -f $IN/train.idx ]] || {
  "$PY" "$REPO/examples/quickstart/prepare.py" "$IN" --vocab-size "$VOCAB" --max-mb "$MB" "${text_roots[@]}"
  for part in train held_out; do
    "$PY" "$REPO/data_tools/preprocess_data.py" --input "$IN/$part.jsonl" --tokenizer "$IN/tokenizer" \
      --output-prefix "$IN/$part" --workers 4
  done
}

train() {  # train RUN_NAME STEPS key=value ...
  "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m megatron_mamba.train \
    preset="$SHAPE" model.vocab_size="$VOCAB" data.kind=corpus data.path="$IN/train" \
    data.tokenizer="$IN/tokenizer" data.item_length=$((SEQ + 1)) data.valid_path="$IN/held_out" \
    train.run_name="$1" train.max_steps="$2" train.num_train_epochs=1000 train.output_dir="$OUT" \
    train.per_device_train_batch_size="$MICRO" train.mixed_precision="$PRECISION" \
    train.learning_rate=6e-4 train.min_lr=6e-5 train.warmup_ratio=0.03 train.clip_grad_norm=1.0 \
    train.eval_interval=$(($2 / 5)) train.log_every=10 "train.report_to=[console,jsonl]" \
    train.resume_from_checkpoint=auto train.cuda_graph="$GRAPHS" "${@:3}"
}

step "2. the teacher: $SHAPE trained from scratch for $TEACHER_STEPS steps"
[[ -f $OUT/teacher/checkpoints/latest ]] || train teacher "$TEACHER_STEPS" train.weight_decay=0.1

LAYERS=$("$PY" -c "from megatron_mamba.models.presets import preset; print(preset('$SHAPE').num_layers)")
PATTERN=$(printf 'M%.0s' $(seq "$LAYERS"))
step "3. the all-mamba1 student ($PATTERN), unguided, target-guided and hybrid"
for mode in unguided target_guided hybrid; do
  alpha=15 until=null
  [[ $mode == unguided ]] && alpha=0
  [[ $mode == hybrid ]] && until=0.4
  train "$mode" "$STUDENT_STEPS" model.layer_pattern="$PATTERN" \
    train.init_from_attention="$OUT/teacher" distill.teacher="$OUT/teacher" \
    distill.alpha_layer_distill_loss="$alpha" distill.layer_distill_until="$until" \
    train.weight_decay=0.1 train.weight_decay_mamba_only=true
done

MODELS=(teacher unguided target_guided hybrid)
step "4. held-out perplexity"
paths=() && for name in "${MODELS[@]}"; do paths+=("$OUT/$name"); done
rm -f "$OUT/eval/perplexity.jsonl"
"$PY" "$REPO/eval/perplexity.py" --checkpoint "${paths[@]}" --data "$IN/held_out" --seq_length "$SEQ" \
  --output "$OUT/eval/perplexity.jsonl"
"$PY" "$REPO/examples/quickstart/report.py" "$OUT" "${MODELS[@]}"
echo "done in $((SECONDS / 60))m$((SECONDS % 60))s; everything is in $OUT"
