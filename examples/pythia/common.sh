# Shared by the Pythia examples (sourced). DATA_PROP picks CALD's data proportion of the Pile:
# 05p / 1p / 2p → max_train_samples, lr_decay_steps and the hybrid switch step of the seed.
# The global batch stays the seed's 128 on any NPROC and TP/PP (train.global_batch_size).
# `--tiny` among the arguments runs the same recipe on a tiny model and stand-in data.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../env.sh"  # REPO, PY; paths given are the caller's
NPROC=${NPROC:-1}
# One process runs without torchrun, so that an error is its one line, not torchrun's report too.
LAUNCH=() && ((NPROC == 1)) || LAUNCH=(-m torch.distributed.run --nproc_per_node "$NPROC")
DATA_PROP=${DATA_PROP:-05p}
case $DATA_PROP in  # SWITCH_STEP: CALD's 40P (for 1p and 2p its 40th checkpoint, every int(1%))
  05p) TRAIN_SAMPLES=732160 DECAY_STEPS=12000 SWITCH_STEP=4576 ;;
  1p) TRAIN_SAMPLES=1464320 DECAY_STEPS=24000 SWITCH_STEP=9120 ;;
  2p) TRAIN_SAMPLES=2928640 DECAY_STEPS=24000 SWITCH_STEP=18280 ;;
  *) echo "DATA_PROP=$DATA_PROP is unknown; expected 05p, 1p or 2p" >&2 && exit 2 ;;
esac
CONFIG="$REPO/examples/pythia/pythia-1b.yaml"
DATA=${DATA:-data/pile_pythia/document}       # the pre-shuffled Pile (data_tools/merge_pythia_shards.py)
TEACHER=${TEACHER:-checkpoints/pythia-1b}     # Pythia-1b imported to a native checkpoint
ARGS=() TINY_RUN=0  # --tiny, wherever it is among the arguments; the rest are key=value
for arg in "$@"; do [[ $arg == --tiny ]] && TINY_RUN=1 || ARGS+=("$arg"); done
set -- ${ARGS[@]+"${ARGS[@]}"}
if ((TINY_RUN)); then
  TINY=${TINY_DIR:-output/tiny/inputs}
  [[ -f $TINY/teacher.pt ]] || "$PY" "$REPO/examples/pythia/make_tiny.py" "$TINY"
  CONFIG="$REPO/examples/pythia/tiny.yaml" DATA=$TINY/document TEACHER=$TINY/teacher.pt
  TRAIN_SAMPLES=128 DECAY_STEPS=24 SWITCH_STEP=
fi
# The hybrid's switch (the tiny run: 40% of its steps); the target-guided run keeps that step.
SWITCH=distill.layer_distill_until_step=$SWITCH_STEP KEEP="[$SWITCH_STEP]"
[[ -n $SWITCH_STEP ]] || SWITCH=distill.layer_distill_until=0.4 KEEP="[]"

train() {  # resume=auto: a rerun continues an interrupted run and skips a finished one
  # The student is the teacher's with fresh mixers, unless train.init_from gives its weights.
  local start=(train.init_from_attention="$TEACHER") arg
  for arg in "$@"; do [[ $arg == train.init_from=* ]] && start=(); done
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" "${LAUNCH[@]}" -m megatron_mamba.train \
    --config "$CONFIG" data.path="$DATA" ${start[@]+"${start[@]}"} \
    train.max_train_samples="$TRAIN_SAMPLES" \
    train.lr_decay_steps="$DECAY_STEPS" train.resume_from_checkpoint=auto "$@"
}
