"""Evolutionary search (NSGA-III) over meta-metric genomes and layer-wise sparsity plans."""
