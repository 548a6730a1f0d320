"""Training: gradient buffers and reductions, the loop, optimizer and schedule, checkpoints."""
