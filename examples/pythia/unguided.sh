#!/usr/bin/env bash
# CALD "direct" (unguided): cross-entropy only; the student starts from Pythia's weights.
#   DATA_PROP=1p NPROC=8 bash examples/pythia/unguided.sh [--tiny] [key=value ...]
source "$(dirname "$0")/common.sh"
train train.run_name="LM_direct_${DATA_PROP}" "$@"
