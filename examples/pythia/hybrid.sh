#!/usr/bin/env bash
# CALD hybrid: target-guided up to the seed's switch step (its 40th checkpoint, ~40%), then CE
# only, in one run (the LR schedule continues). The seed's way also works: target_guided.sh keeps
# the checkpoint of that step; resume it, with the same NPROC, by distill.alpha_layer_distill_loss=0
# train.resume_from_checkpoint=output/pile/LM_1p/checkpoints/step_00009120 (1p) and a run_name of
# its own, e.g. train.run_name=LM_1p_hybrid_seed.
#   DATA_PROP=1p NPROC=8 bash examples/pythia/hybrid.sh [--tiny] [key=value ...]
source "$(dirname "$0")/common.sh"
train train.run_name="LM_${DATA_PROP}_hybrid" distill.teacher="$TEACHER" \
  distill.alpha_layer_distill_loss=15 "$SWITCH" "$@"
