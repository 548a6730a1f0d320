"""Checkpoint conversion between Hugging Face transformers and the native (megatron) layout."""
