"""OptiShear: prune causal LMs with searched pruning metrics and layer-wise sparsity."""

__version__ = "0.1.0"
