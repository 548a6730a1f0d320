"""Thin command-line tools: import from and export to transformers, swap layers, plot a run."""
