"""Model family: GPTNeoX and Llama/Mistral blocks whose mixer is chosen per layer."""
