"""megatron-mamba: turn pretrained Transformers into Mamba or hybrid Mamba models and retrain them.

Importing the package registers the hybrid model types with transformers' AutoConfig and
AutoModelForCausalLM, so `AutoModelForCausalLM.from_pretrained(export)` loads our exports, and
(lazily) the lm-eval model `megatron_mamba`. Nothing else happens at import; see
megatron_mamba.runtime to start a run.
"""

__version__ = "0.1.0"

import warnings  # noqa: E402

# megatron-core announces at import that Transformer Engine and Apex are absent; this project
# uses its own layers and torch's optimizers, so the notices are noise on every command.
warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine).* not installed")

from megatron_mamba.evaluation.registration import register_with_lm_eval  # noqa: E402
from megatron_mamba.hf import register as _register_with_transformers  # noqa: E402

_register_with_transformers()
register_with_lm_eval()
