"""What users measure: held-out perplexity, downstream tasks (lm-eval), speed, and the records
of a held-out comparison. May import optishear.model, optishear.config and optishear.core; never
the pruning methods, so that a measurement cannot depend on how the model was pruned."""
