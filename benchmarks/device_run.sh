#!/usr/bin/env bash
# Runs chosen GPU tests and benchmarks in one call on the GPU machine, each under its own time
# limit, so that one slow step cannot eat the others' time; logs and JSON results go to $OUT,
# and a summary (each step's exit code and the tables it printed) to stdout.
#
#   source .device/setup.sh && bash benchmarks/device_run.sh logit_test distill attention
#
# The steps: name, seconds allowed, command ($OUT is expanded when the step runs). One call may
# run 600 s, so name steps whose limits fit (2-GPU steps: trainer_2gpu, nccl_* (nccl_*_fused:
# the one-function Mamba1 mixers under TP, pending), dp_scaling,
# graph_2gpu; on 2 GPUs, 2026-12-01: trainer_2gpu 176 s, nccl_logit 61 s, nccl_gpt + nccl_neox
# under 480 s; on one:
# kernel_test + mamba_test reached 17 of their 19 tests in 420 s, each new Triton shape autotunes).
# mamba_graphs: the all-mamba2 benchmark, then the trainer on the same shape without master
# weights, eager and with CUDA graphs (mamba1, CALD's shape: MAMBA_KIND=mamba1
# MAMBA_PATTERN=MMMMMMMMMMMMMMMM MAMBA_OVERRIDES="model.mamba.d_inner=5120 model.mamba.dt_rank=160").
set -u
OUT=${OUT:?set OUT to the results folder}
STEPS='
logit_test   90  python -m pytest -q tests/gpu/test_logit_losses_gpu.py
kernel_test  240 python -m pytest -q --durations=5 tests/gpu/test_kernel_parity.py
mamba_test   480 python -m pytest -q --durations=5 tests/gpu/test_mamba_gpu.py
mamba2_test  300 python -m pytest -q --durations=5 tests/gpu/test_mamba_gpu.py -k "mamba2 or decode"
mamba1_fused_test 240 python -m pytest -q tests/gpu/test_mamba_gpu.py -k one_function
ln_test      120 python -m pytest -q tests/gpu/test_layer_norms_gpu.py
gemm_values  90  python benchmarks/gemm_values.py --out $OUT/gemm_values.json
scan_copies  120 python benchmarks/selective_scan_bwd.py --no-cuda --replicas 2,4,8,16,32,64,128,256,512 --out $OUT/scan_copies.json
mamba_rest   300 python -m pytest -q --durations=5 tests/gpu/test_mamba_gpu.py -k "decode or mamba2_attention-bf16"
model_test   240 python -m pytest -q tests/gpu/test_models_gpu.py tests/gpu/test_hf_hybrid_gpu.py
adamw_test   240 python -m pytest -q tests/gpu/test_adamw_gpu.py
wgrad_test   120 python -m pytest -q tests/gpu/test_weight_grad_gpu.py
norm_test    120 python -m pytest -q tests/gpu/test_norms_gpu.py
swiglu_test  120 python -m pytest -q tests/gpu/test_swiglu_gpu.py
residual_test 120 python -m pytest -q tests/gpu/test_residual_sum_gpu.py
rope_gelu_test 200 python -m pytest -q tests/gpu/test_rope_gpu.py tests/gpu/test_bias_gelu_gpu.py
dpo_test     300 python -m pytest -q tests/gpu/test_dpo_gpu.py
trainer_test 560 python -m pytest -q tests/gpu/test_trainer_gpu.py -k "not matches_the_replicated and not (resumes_exactly and 2)"
trainer_2gpu 330 python -m pytest -q tests/gpu/test_trainer_gpu.py -k "resumes_exactly and 2 or matches_the_replicated"
trainer_bf16 300 python -m pytest -q tests/gpu/test_trainer_gpu.py -k "bf16 or (resumes_exactly and 1)"
batches_test 60  python -m pytest -q tests/gpu/test_batches_gpu.py
nccl_gpt     240 python -m pytest -q tests/gpu/test_nccl_parallel.py -k tp2_matches_one_gpu
nccl_logit   120 python -m pytest -q tests/gpu/test_nccl_parallel.py -k logit_losses
nccl_neox    420 python -m pytest -q tests/gpu/test_nccl_parallel.py -k gpt_neox_hybrid
nccl_neox_fused 420 MEGATRON_MAMBA_PENDING_KERNELS=1 python -m pytest -q tests/gpu/test_nccl_parallel.py -k gpt_neox_hybrid
nccl_llama_fused 420 MEGATRON_MAMBA_PENDING_KERNELS=1 python -m pytest -q tests/gpu/test_nccl_parallel.py -k llama_hybrid
nccl_llama   420 python -m pytest -q tests/gpu/test_nccl_parallel.py -k llama_hybrid
logit        60  torchrun --nproc_per_node 1 benchmarks/logit_losses.py
attention    240 torchrun --nproc_per_node 1 benchmarks/attention_model.py --rounds 6
attention_same 240 torchrun --nproc_per_node 1 benchmarks/attention_model.py --rounds 3 --same-weights
attention_clocks 240 torchrun --nproc_per_node 1 benchmarks/attention_model.py --rounds 6 --clocks --out $OUT/attention_clocks.json
attention_pending 300 torchrun --nproc_per_node 1 benchmarks/attention_model.py --rounds 6 --pending --clocks --out $OUT/attention_pending.json
attention_graphed 360 torchrun --nproc_per_node 1 benchmarks/attention_model.py --rounds 6 --graphed --clocks --out $OUT/attention_graphed.json
mamba1       300 torchrun --nproc_per_node 1 benchmarks/mamba_model.py --kinds mamba1 --rounds 3
mamba2       300 torchrun --nproc_per_node 1 benchmarks/mamba_model.py --kinds mamba2 --rounds 3
mamba_graphed 480 torchrun --nproc_per_node 1 benchmarks/mamba_model.py --kinds ${MAMBA_KIND:-mamba2} --rounds 3 --graphed --out $OUT/mamba_graphed.json
distill      200 torchrun --nproc_per_node 1 benchmarks/distill_step.py --rounds 5 --out $OUT/distill_step.json
profile_distill 300 torchrun --nproc_per_node 1 benchmarks/distill_step.py --graphs --profile 40 --out $OUT/distill_profile.json
distill_graphed 240 torchrun --nproc_per_node 1 benchmarks/distill_step.py --graphs --out $OUT/distill_graphed.json
distill_graphed_pending 240 MEGATRON_MAMBA_PENDING_KERNELS=1 torchrun --nproc_per_node 1 benchmarks/distill_step.py --graphs --out $OUT/distill_graphed_pending.json
batch_first_test 240 python -m pytest -q tests/gpu/test_layer_norms_gpu.py tests/gpu/test_residual_sum_gpu.py tests/gpu/test_mamba_gpu.py -k "batch_first or in_place or one_function"
dpo          240 python benchmarks/dpo_step.py --workdir /tmp/dpo --out $OUT/dpo_step.json
dpo_graphs   420 python benchmarks/dpo_step.py --workdir /tmp/dpo --out $OUT/dpo_step.json --graphs --rounds 5
dpo_twice    440 for i in 1 2; do python benchmarks/dpo_step.py --workdir /tmp/dpo --out $OUT/dpo_step_$i.json --graphs || exit 1; done
dpo_rounds   330 python benchmarks/dpo_step.py --workdir /tmp/dpo --out $OUT/dpo_rounds.json --graphs --rounds 5 --interleaved-only
dpo_rounds_pending 330 MEGATRON_MAMBA_PENDING_KERNELS=1 python benchmarks/dpo_step.py --workdir /tmp/dpo --out $OUT/dpo_rounds_pending.json --graphs --rounds 5 --interleaved-only
optimizer    150 python benchmarks/optimizer_step.py --out $OUT/optimizer_step.json
adamw_blocks 150 python benchmarks/adamw_blocks.py --out $OUT/adamw_blocks.json
gelu_tiles   120 python benchmarks/gelu_tiles.py --out $OUT/gelu_tiles.json
layer_mse    90  python benchmarks/layer_mse.py --out $OUT/layer_mse.json
scan_cuda_test 240 python -m pytest -q tests/gpu/test_scan_backward_cuda_gpu.py
scan_cuda    200 python -u benchmarks/selective_scan_bwd.py --replicas "" --out $OUT/scan_cuda.json
scan_atomics 150 python -u benchmarks/scan_atomics.py --out $OUT/scan_atomics.json
ssd_chunks   330 python -u benchmarks/ssd_chunks.py --out $OUT/ssd_chunks.json
layer_mse_test 120 python -m pytest -q tests/gpu/test_layer_mse_gpu.py
sdpa_layouts 120 python benchmarks/sdpa_layouts.py --out $OUT/sdpa_layouts.json
profile_attention 150 torchrun --nproc_per_node 1 benchmarks/profile_step.py --model attention --rows 40
profile_mamba2    240 torchrun --nproc_per_node 1 benchmarks/profile_step.py --model mamba2 --rows 40
profile_mamba1    240 torchrun --nproc_per_node 1 benchmarks/profile_step.py --model mamba1 --rows 40
profile_dpo       240 python benchmarks/dpo_step.py --workdir /tmp/dpo --out $OUT/dpo_profile.json --profile 45
graph_probe  480 for c in conv selective_scan mamba_inner ssd_combined model_attention model_mamba1 model_mamba2 model_llama_hybrid; do timeout 110 torchrun --nproc_per_node 1 benchmarks/cuda_graph_probe.py --cases $c; done
graphs       420 for model in ${GRAPH_MODELS:-pythia-160m:AMAMAMAMAMAM:1024 pythia-1b:AMAMAMAMAMAMAMAM:2048}; do IFS=: read -r p pat s <<< $model; for g in 0 1; do BENCH_PRESET=$p BENCH_PATTERN=$pat BENCH_SEQ=$s BENCH_CUDA_GRAPH=$g torchrun --nproc_per_node 1 benchmarks/trainer_overhead.py --mode trainer --out $OUT/graphs_${p}_$g.json; done; done
distill_graphs 420 for model in ${GRAPH_MODELS:-pythia-160m:AMAMAMAMAMAM:1024 pythia-1b:AMAMAMAMAMAMAMAM:2048}; do IFS=: read -r p pat s <<< $model; for g in 0 1; do BENCH_PRESET=$p BENCH_PATTERN=$pat BENCH_SEQ=$s BENCH_CUDA_GRAPH=$g BENCH_TEACHER=1 torchrun --nproc_per_node 1 benchmarks/trainer_overhead.py --mode trainer --out $OUT/distill_graphs_${p}_$g.json; done; done
mamba_graphs 560 torchrun --nproc_per_node 1 benchmarks/mamba_model.py --kinds ${MAMBA_KIND:-mamba2} --rounds 3 && for g in 0 1; do BENCH_PATTERN=${MAMBA_PATTERN:-SSSSSSSSSSSSSSSS} BENCH_CUDA_GRAPH=$g BENCH_OVERRIDES="train.fp32_master_weights=false ${MAMBA_OVERRIDES:-}" torchrun --nproc_per_node 1 benchmarks/trainer_overhead.py --mode trainer --out $OUT/mamba_graphs_$g.json; done
graph_test   570 python -m pytest -q tests/gpu/test_cuda_graph_gpu.py
graph_mamba1 200 python -m pytest -q tests/gpu/test_cuda_graph_gpu.py -k replayed_steps_give
graph_rest   300 python -m pytest -q tests/gpu/test_cuda_graph_gpu.py -k "replayed_dpo or distillation_with"
graph_2gpu   540 python -m pytest -q tests/gpu/test_cuda_graph_gpu.py -k two_gpus
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
