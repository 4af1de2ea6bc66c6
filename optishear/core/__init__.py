"""The vocabulary every other package shares: errors, library settings, file helpers, sparsity
patterns and metric genomes. Plain data; no torch, and no import from the rest of optishear."""
