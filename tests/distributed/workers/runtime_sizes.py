"""Worker: init_runtime takes the same parallel sizes again and refuses other ones while
initialised. Fails (non-zero exit) otherwise."""

from megatron_mamba.runtime import ParallelSizes, init_runtime, shutdown_runtime

init_runtime(ParallelSizes(tensor=2))
init_runtime(ParallelSizes(tensor=2))  # the same sizes: a no-op
try:
    init_runtime(ParallelSizes())
except RuntimeError as error:
    assert "already initialised with tensor × pipeline = 2 × 1" in str(error), error
else:
    raise AssertionError("other sizes were taken while initialised")
print("ok")
shutdown_runtime()
