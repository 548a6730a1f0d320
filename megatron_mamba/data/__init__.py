"""Training data: Megatron indexed datasets, Pythia's pre-shuffled Pile order, preprocessing."""
