#!/usr/bin/env bash
# CALD target-guided: CE + 15 × layer-wise distillation from the frozen Pythia teacher.
#   DATA_PROP=1p NPROC=8 bash examples/pythia/target_guided.sh [--tiny] [key=value ...]
source "$(dirname "$0")/common.sh"
# The checkpoint at the hybrid switch step is kept, for the seed's way of the hybrid mode.
train train.run_name="LM_${DATA_PROP}" distill.teacher="$TEACHER" \
  distill.alpha_layer_distill_loss=15 "train.keep_checkpoint_steps=$KEEP" "$@"
