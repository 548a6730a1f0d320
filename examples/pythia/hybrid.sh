#!/usr/bin/env bash
# CALD hybrid: target-guided for the first 40% of the steps, then CE only, in one run (the LR
# schedule continues). The seed's way — resuming a target-guided checkpoint at 40% with
# distill.alpha_layer_distill_loss=0 — also works: train.resume_from_checkpoint=<its step dir>.
#   DATA_PROP=1p NPROC=8 bash examples/pythia/hybrid.sh [--tiny] [key=value ...]
source "$(dirname "$0")/common.sh"
train train.run_name="LM_${DATA_PROP}_hybrid" distill.teacher="$TEACHER" \
  distill.alpha_layer_distill_loss=15 distill.layer_distill_until=0.4 "$@"
