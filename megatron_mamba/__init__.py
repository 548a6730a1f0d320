"""megatron-mamba: turn pretrained Transformers into Mamba or hybrid Mamba models and retrain them.

Importing the package only silences megatron-core's notices about Transformer Engine and Apex
and turns Triton's autotune cache on (unless TRITON_CACHE_AUTOTUNING is set). `import
megatron_mamba.hf` registers the hybrid model types with transformers' AutoConfig and
AutoModelForCausalLM (exports also load without it, with trust_remote_code=True); `import
megatron_mamba.evaluation` registers the lm-eval model `megatron_mamba`. Every process of a run
imports this package, so it stays light: see megatron_mamba.runtime to start a run.
"""

__version__ = "0.1.0"

import os  # noqa: E402
import warnings  # noqa: E402

# megatron-core announces at import that Transformer Engine and Apex are absent; this project
# uses its own layers and torch's optimizers, so the notices are noise on every command.
warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine).* not installed")

# mamba_ssm's SSD kernels are Triton autotuned, and fresh GPU processes spent 60-120 s before
# their first step (H200), much of it compiling and tuning them. Compiled kernels are cached by
# default, the tuning results only with this (read when the kernels are defined, hence here,
# before transformers or our kernels import them).
os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
