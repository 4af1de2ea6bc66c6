"""Pruning methods behind one registry: each prunes one linear layer in place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import Tensor

from optishear.config import METHODS
from optishear.core.errors import ConfigError, UnknownMethodError
from optishear.core.genome import Genome
from optishear.core.patterns import Pattern
from optishear.methods.masks import prune_mask
from optishear.methods.meta import meta_log_score
from optishear.methods.metrics import ScoreFn, get_metric
from optishear.methods.sparsegpt import hessian_rho, sparsegpt_prune
from optishear.methods.stats import LayerStats


@dataclass(frozen=True, slots=True)
class LayerTask:
    """One linear layer to prune: its live weight, input statistics and target."""

    name: str
    weight: Tensor  # (d_out, d_in), modified in place
    stats: LayerStats | None
    ratio: float
    pattern: Pattern


PruneLayerFn = Callable[[LayerTask], Tensor]


@dataclass(frozen=True, slots=True)
class Method:
    """A pruning method: prune_layer zeroes weights in place and returns the pruned mask."""

    name: str
    prune_layer: PruneLayerFn
    needs_activations: bool = True
    needs_hessian: bool = False
    updates_weights: bool = False  # reconstructs the survivors itself (SparseGPT)


def _apply(task: LayerTask, score: Tensor, *, per_matrix: bool = False) -> Tensor:
    mask = prune_mask(score, task.ratio, task.pattern, per_matrix=per_matrix)
    task.weight.masked_fill_(mask, 0.0)
    return mask


def _act_sq(task: LayerTask) -> Tensor:
    if task.stats is None:
        raise RuntimeError(f"layer {task.name}: this method needs activation statistics")
    return task.stats.act_sq


def score_pruning(task: LayerTask, *, score: ScoreFn, per_matrix: bool) -> Tensor:
    """Prune by a score: the lowest-scoring weights of each comparison group go."""
    act_sq = task.stats.act_sq if task.stats is not None else task.weight.new_ones(0)
    return _apply(task, score(task.weight, act_sq), per_matrix=per_matrix)


def meta_pruning(task: LayerTask, *, genome: Genome) -> Tensor:
    """OptiShear's searched metric: per-row comparison of the genome's score."""
    rho = None
    if genome.second_order:
        assert task.stats is not None  # _act_sq checks it first
        rho = hessian_rho(task.stats.hessian)
    return _apply(task, meta_log_score(task.weight, _act_sq(task), genome, rho))


def sparsegpt_pruning(task: LayerTask) -> Tensor:
    """SparseGPT: second-order mask selection with weight reconstruction."""
    if task.stats is None:
        raise RuntimeError(f"layer {task.name}: SparseGPT needs a Hessian")
    return sparsegpt_prune(task.weight, task.stats.hessian, task.ratio, task.pattern)


def build_method(name: str, genome: Genome | None = None) -> Method:
    """The Method called `name`; 'meta' needs a genome, the others refuse one."""
    if name not in METHODS:
        raise UnknownMethodError(f"unknown pruning method {name!r}; known: {', '.join(METHODS)}")
    if (genome is not None) != (name == "meta"):
        raise ConfigError("a genome is given with method 'meta', and only with it")
    if name == "magnitude":
        # Magnitude compares within the whole matrix, as is standard for it.
        fn = partial(score_pruning, score=get_metric("magnitude"), per_matrix=True)
        return Method(name, fn, needs_activations=False)
    if name in ("wanda", "ria"):
        return Method(name, partial(score_pruning, score=get_metric(name), per_matrix=False))
    if name == "sparsegpt":
        return Method(name, sparsegpt_pruning, needs_hessian=True, updates_weights=True)
    assert genome is not None
    return Method(name, partial(meta_pruning, genome=genome), needs_hessian=genome.second_order)
