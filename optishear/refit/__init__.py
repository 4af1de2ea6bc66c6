"""Weight reconstruction with the mask fixed: least-squares refits of a pruned layer. May import
optishear.methods (its Hessian helpers), optishear.config and optishear.core."""
