#!/usr/bin/env bash
# Runs chosen GPU tests and benchmarks in one call on the GPU machine, each under its own time
# limit, so that one slow step cannot eat the others' time; logs and JSON results go to $OUT,
# and a summary (each step's exit code and the tables it printed) to stdout.
#
#   source .device/setup.sh && bash benchmarks/device_run.sh logit_test distill attention
#
# The steps: name, seconds allowed, command ($OUT is expanded when the step runs).
set -u
OUT=${OUT:?set OUT to the results folder}
STEPS='
logit_test   90  python -m pytest -q tests/gpu/test_logit_losses_gpu.py
kernel_test  420 python -m pytest -q tests/gpu/test_kernel_parity.py tests/gpu/test_mamba_gpu.py
model_test   240 python -m pytest -q tests/gpu/test_models_gpu.py tests/gpu/test_hf_hybrid_gpu.py
trainer_test 420 python -m pytest -q tests/gpu/test_trainer_gpu.py
nccl_test    480 python -m pytest -q tests/gpu/test_nccl_parallel.py
logit        60  torchrun --nproc_per_node 1 benchmarks/logit_losses.py
attention    120 torchrun --nproc_per_node 1 benchmarks/attention_model.py
mamba1       150 torchrun --nproc_per_node 1 benchmarks/mamba_model.py --kinds mamba1
mamba2       240 torchrun --nproc_per_node 1 benchmarks/mamba_model.py --kinds mamba2
distill      170 torchrun --nproc_per_node 1 benchmarks/distill_step.py --out $OUT/distill_step.json
dpo          120 python benchmarks/dpo_step.py --workdir /tmp/dpo --out $OUT/dpo_step.json
optimizer    90  python benchmarks/optimizer_step.py
overhead     240 torchrun --nproc_per_node 1 benchmarks/trainer_overhead.py --mode bare --out $OUT/bare.json && torchrun --nproc_per_node 1 benchmarks/trainer_overhead.py --mode trainer --out $OUT/t1.json
dp_scaling   300 torchrun --nproc_per_node 1 benchmarks/trainer_overhead.py --mode trainer --out $OUT/dp1.json && torchrun --nproc_per_node 2 benchmarks/trainer_overhead.py --mode trainer --out $OUT/dp2.json
'
names=$(awk 'NF { printf "%s ", $1 }' <<< "$STEPS")
[ $# -gt 0 ] || { echo "name one or more steps: $names" >&2; exit 2; }
for step in "$@"; do
  grep -q "^$step " <<< "$STEPS" || { echo "unknown step '$step'; expected one of: $names" >&2; exit 2; }
done
for step in "$@"; do
  read -r _ limit command <<< "$(grep "^$step " <<< "$STEPS")"
  start=$(date +%s)
  timeout "$limit" bash -c "${command//\$OUT/$OUT}" > "$OUT/$step.log" 2>&1
  rc=$?
  echo "== $step: exit $rc in $(( $(date +%s) - start )) s (limit $limit s)"
  # the tables a benchmark printed, or pytest's summary and failures
  grep -E '^\||^\{|passed|failed|skipped|^FAILED|^E   ' "$OUT/$step.log" | tail -n 25
done
