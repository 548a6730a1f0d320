"""Evaluation: the lm-eval model `megatron_mamba`, CALD's task suite and its comparison table, and
held-out perplexity on an indexed dataset (also the trainer's periodic validation)."""
