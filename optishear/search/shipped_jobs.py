"""One prune, two measures: a recipe's error as shipped and, on the very same pruned weights,
its held-out perplexity.

The finish scores the finalists and the published baselines as shipped
(optishear.search.finish), and a comparing search reports the held-out perplexity of what ships,
Wanda's, SparseGPT's and OWL+SparseGPT's (optishear.recipe.comparison): the same prunes. A job
does both on one pruned model, so that each is pruned once whichever ships, and the dense
model's row joins the same batch, so that the workers share all of it out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from optishear.config import EvaluationConfig, PruneConfig
from optishear.evaluation.held_out import HeldOutRow
from optishear.evaluation.perplexity import perplexity
from optishear.recipe.candidates import Evaluation
from optishear.search.fitness import FitnessEngine

# (the prune, None: the dense model; the name of its held-out row, None: no row)
ShippedJob = tuple[PruneConfig | None, str | None]
JobResult = tuple[Evaluation | None, HeldOutRow | None]
# hears each result (with its job's index) as it comes; the jobs it returns run too, after
# those given, their indices following on
JobProgress = Callable[[int, JobResult], "Sequence[ShippedJob] | None"]


@dataclass(frozen=True)
class HeldOutRequest:
    """The held-out windows a comparing search measures its rows on."""

    evaluation: EvaluationConfig
    ids: Tensor


def run_job(
    engine: FitnessEngine,
    prune: PruneConfig | None,
    name: str | None,
    evaluation: EvaluationConfig,
    ids: Tensor,
) -> JobResult:
    """The job's error as shipped (None for the dense model) and its held-out row (None
    without a name); the engine's model is dense again afterwards."""
    if prune is None:
        if name is None:
            raise ValueError("a job without a prune is the dense model's held-out row: name it")
        return None, engine.held_out_row(name, None, evaluation, ids)
    if name is None:
        return engine.evaluate_shipped(prune), None
    try:
        scored = engine.evaluate_shipped(prune, keep=True)
        ppl = perplexity(engine.model, ids, evaluation)
    finally:
        engine.restore()
    row = HeldOutRow(
        name=name,
        perplexity=ppl.perplexity,
        sparsity=scored.sparsity,
        prune_seconds=scored.seconds,  # the prune and its validation forward
        window_nll=list(ppl.window_nll),
    )
    return scored, row
