"""Side-by-side GPU benchmarks; results are recorded in benchmarks/RESULTS.md."""
