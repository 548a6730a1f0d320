"""Thin command-line tools: convert, export, reshard, inspect checkpoints."""
