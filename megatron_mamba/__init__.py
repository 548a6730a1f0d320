"""megatron-mamba: turn pretrained Transformers into Mamba or hybrid models and retrain them.

Importing the package has no side effects; see megatron_mamba.runtime to start a run.
"""

__version__ = "0.1.0"
