"""Evaluation: the lm-eval model `megatron_mamba` (registered with lm-eval on import, lazily:
the adapter loads when the model is asked for), CALD's task suite and its comparison table, and
held-out perplexity on an indexed dataset (also the trainer's periodic validation)."""

from megatron_mamba.evaluation.registration import register_with_lm_eval

register_with_lm_eval()
