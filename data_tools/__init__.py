"""Thin command-line tools for datasets: preprocess, merge, inspect."""
