"""Pruning one linear layer: the metrics, the meta metric, masks by pattern, activation
statistics, SparseGPT, layer-wise plans and the registry of methods. May import optishear.config,
optishear.model and optishear.core; never the recipe, the search or the evaluation."""
