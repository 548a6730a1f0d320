#!/usr/bin/env bash
# Runs chosen GPU tests and benchmarks in one call on the GPU machine, each under its own time
# limit, so that one slow step cannot eat the others' time; logs and JSON results go to $OUT,
# and a summary (each step's exit code and the tables it printed) to stdout.
#
#   source .device/setup.sh && bash benchmarks/device_run.sh logit_test distill attention
#
# Steps (name: what, seconds allowed):
#   logit_test   tests/gpu/test_logit_losses_gpu.py                     90
#   kernel_test  tests/gpu/test_kernel_parity.py + test_mamba_gpu.py   240
#   model_test   tests/gpu/test_models_gpu.py                          180
#   trainer_test tests/gpu/test_trainer_gpu.py                         300
#   nccl_test    tests/gpu/test_nccl_parallel.py (2 GPUs)              480
#   logit        benchmarks/logit_losses.py                             60
#   attention    benchmarks/attention_model.py                         120
#   mamba1       benchmarks/mamba_model.py --kinds mamba1              150
#   mamba2       benchmarks/mamba_model.py --kinds mamba2              240
#   distill      benchmarks/distill_step.py                            170
#   dpo          benchmarks/dpo_step.py                                120
#   optimizer    benchmarks/optimizer_step.py                           90
set -u
OUT=${OUT:?set OUT to the results folder}
declare -A COMMAND=(
  [logit_test]="python -m pytest -q tests/gpu/test_logit_losses_gpu.py"
  [kernel_test]="python -m pytest -q tests/gpu/test_kernel_parity.py tests/gpu/test_mamba_gpu.py"
  [model_test]="python -m pytest -q tests/gpu/test_models_gpu.py"
  [trainer_test]="python -m pytest -q tests/gpu/test_trainer_gpu.py"
  [nccl_test]="python -m pytest -q tests/gpu/test_nccl_parallel.py"
  [logit]="torchrun --nproc_per_node 1 benchmarks/logit_losses.py"
  [attention]="torchrun --nproc_per_node 1 benchmarks/attention_model.py"
  [mamba1]="torchrun --nproc_per_node 1 benchmarks/mamba_model.py --kinds mamba1"
  [mamba2]="torchrun --nproc_per_node 1 benchmarks/mamba_model.py --kinds mamba2"
  [distill]="torchrun --nproc_per_node 1 benchmarks/distill_step.py --out $OUT/distill_step.json"
  [dpo]="python benchmarks/dpo_step.py --workdir /tmp/dpo --out $OUT/dpo_step.json"
  [optimizer]="python benchmarks/optimizer_step.py"
)
declare -A LIMIT=(
  [logit_test]=90 [kernel_test]=240 [model_test]=180 [trainer_test]=300 [nccl_test]=480
  [logit]=60 [attention]=120 [mamba1]=150 [mamba2]=240 [distill]=170 [dpo]=120 [optimizer]=90
)
[ $# -gt 0 ] || { echo "name one or more steps: ${!COMMAND[*]}" >&2; exit 2; }
for step in "$@"; do
  [ -n "${COMMAND[$step]:-}" ] || { echo "unknown step '$step'; expected one of: ${!COMMAND[*]}" >&2; exit 2; }
done
for step in "$@"; do
  start=$(date +%s)
  timeout "${LIMIT[$step]}" ${COMMAND[$step]} > "$OUT/$step.log" 2>&1
  rc=$?
  echo "== $step: exit $rc in $(( $(date +%s) - start )) s (limit ${LIMIT[$step]} s)"
  # the tables a benchmark printed, or pytest's summary and failures
  grep -E '^\||^\{|passed|failed|skipped|^FAILED|^E   ' "$OUT/$step.log" | tail -n 25
done
