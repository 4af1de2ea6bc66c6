"""Evolutionary search (NSGA-III, pymoo) over meta-metric genomes, layer-wise sparsity plans and
per-layer allocations: the space, the fitness engine, screening, the ask/tell loop and its
versioned state. May import every library package but the command line."""
