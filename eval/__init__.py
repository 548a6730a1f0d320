"""lm-eval runner and model adapter."""
