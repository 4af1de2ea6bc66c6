"""Weight reconstruction with the mask fixed: least-squares refits of a pruned layer
(reconstruct), and the update a prune applies to its survivors (update: the refit or SparseGPT's
OBS step). May import optishear.methods, optishear.model, optishear.config and optishear.core."""
