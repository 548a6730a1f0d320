"""Worker: init_runtime refuses other parallel sizes while initialised, and takes them after
shutdown_runtime. Fails (non-zero exit) otherwise."""

from megatron.core import parallel_state as ps

from megatron_mamba.runtime import ParallelSizes, init_runtime, shutdown_runtime

init_runtime(ParallelSizes(tensor=2))
init_runtime(ParallelSizes(tensor=2))  # the same sizes: a no-op
try:
    init_runtime(ParallelSizes())
except RuntimeError as error:
    assert "already initialised with tensor × pipeline = 2 × 1" in str(error), error
else:
    raise AssertionError("other sizes were taken while initialised")
shutdown_runtime()
init_runtime(ParallelSizes())
assert ps.get_tensor_model_parallel_world_size() == 1
print("ok")
shutdown_runtime()
