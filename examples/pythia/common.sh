# Shared by the Pythia examples (sourced). DATA_PROP picks CALD's data proportion of the Pile:
# 05p / 1p / 2p → max_train_samples and lr_decay_steps of the seed. `--tiny` as the first
# argument runs the same recipe on a tiny model and stand-in data made on the spot.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PYTHON:-python}
NPROC=${NPROC:-1}
DATA_PROP=${DATA_PROP:-05p}
case $DATA_PROP in
  05p) TRAIN_SAMPLES=732160 DECAY_STEPS=12000 ;;
  1p) TRAIN_SAMPLES=1464320 DECAY_STEPS=24000 ;;
  2p) TRAIN_SAMPLES=2928640 DECAY_STEPS=24000 ;;
  *) echo "DATA_PROP=$DATA_PROP is unknown; expected 05p, 1p or 2p" >&2 && exit 2 ;;
esac
CONFIG=examples/pythia/pythia-1b.yaml
DATA=${DATA:-data/pile_pythia/document}       # the pre-shuffled Pile (data_tools/merge_pythia_shards.py)
TEACHER=${TEACHER:-checkpoints/pythia-1b}     # Pythia-1b imported to a native checkpoint
if [[ "${1:-}" == "--tiny" ]]; then
  shift
  TINY=${TINY_DIR:-output/tiny/inputs}
  [[ -f $TINY/teacher.pt ]] || "$PY" examples/pythia/make_tiny.py "$TINY"
  CONFIG=examples/pythia/tiny.yaml DATA=$TINY/document TEACHER=$TINY/teacher.pt
  TRAIN_SAMPLES=128 DECAY_STEPS=24
fi

train() {
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" -m torch.distributed.run --nproc_per_node "$NPROC" \
    -m megatron_mamba.train --config "$CONFIG" data.path="$DATA" \
    train.init_from_attention="$TEACHER" train.max_train_samples="$TRAIN_SAMPLES" \
    train.lr_decay_steps="$DECAY_STEPS" "$@"
}
