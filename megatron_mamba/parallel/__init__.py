"""Helpers for moving whole (unsharded) tensors in and out of a TP/PP-sharded megatron model."""
