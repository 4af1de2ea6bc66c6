"""The recommendation: the best candidates and the published baselines, each pruned as it ships
and scored on the same sequences; the lowest error is recommended, and its recipe shipped.

Scored = shipped. The engine scores a candidate laid over the dense model (masks from one set of
statistics, or a layer database's stored weights); the model a user downloads is pruned block
by block with statistics from its pruned prefix and the search's update of the survivors
(`SearchConfig.shipped_update`: none, SparseGPT's OBS step, a least-squares refit). So the
finalists are scored again by the very recipe (a PruneConfig) that ships them, and that recipe
is what the result hands on: the held-out comparison, the CLI's export and the runner's export
all prune by it, and the recommended error is the shipped model's.

Never silently worse than a baseline. The prunes a user would run by hand at the same target
(SparseGPT, uniform Wanda with a least-squares refit, Wanda, and with an unstructured pattern
OWL+SparseGPT and OWL+Wanda, and in a per-layer allocation search OWL+Wanda with the refit) are
scored the same way; when one beats every finalist, it is the
recommendation, it is what ships, and `note` says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from optishear.config import PlanConfig, PruneConfig, SearchConfig
from optishear.core.genome import WANDA_GENOME
from optishear.core.heartbeat import Heartbeat, Listener
from optishear.evaluation.held_out import (
    BASELINES,
    COMPARED,
    OWL_SPARSEGPT,
    SEARCHED,
    HeldOutRow,
)
from optishear.recipe.candidates import Candidate, Evaluation, Scored
from optishear.recipe.comparison import baseline_config, hand_run_sparsity
from optishear.recipe.shipped import shipped_config
from optishear.search.evaluator import BatchEvaluator, HeldOutComparer, OwlPlanner
from optishear.search.shipped_jobs import HeldOutRequest, JobResult, ShippedJob

logger = logging.getLogger(__name__)


def _relative_cost(job: ShippedJob) -> int:
    """How long a job takes, roughly, in units of a Wanda prune and its forward: a
    least-squares refit, SparseGPT's updates, held-out perplexity (100 s, 26 s, 14 s and 20 s on
    the bundled model at 12 x 128 calibration tokens and 12 x 512 held-out, one thread)."""
    recipe, name = job
    held_out = 1 if name is not None else 0
    if recipe is None:
        return held_out
    if recipe.survivor_update == "lstsq":
        return 7 + held_out
    return held_out + (2 if recipe.method == "sparsegpt" or recipe.survivor_update == "obs" else 1)


@dataclass(frozen=True)
class Recommendation:
    recommended: Scored
    recipe: PruneConfig  # what makes the recommended model
    shipped: list[Scored]  # the finalists as shipped, best first
    fallbacks: list[Scored]  # the published baselines as shipped, in their order
    note: str = ""  # set when a baseline, not a searched candidate, is recommended
    # held-out rows measured on the same prunes: the dense model's, the baselines' and what
    # ships ("searched"), in a comparing search
    held_out: dict[str, HeldOutRow] = field(default_factory=dict)


def candidate_recipe(
    candidate: Candidate, config: SearchConfig, evaluator: BatchEvaluator
) -> PruneConfig:
    """The prune that ships a searched candidate: its genome and plan, the search's update."""
    return shipped_config(
        candidate,
        config.pattern,
        evaluator.block_params,
        update=config.shipped_update(),
        method=config.shipped_method(),
        batch_size=config.batch_size,
        layer_numel=[n for _, _, n in evaluator.layer_layout],
        refit_holdout=config.refit_holdout,
    )


@dataclass(frozen=True)
class BaselinePlans:
    """The per-block plans the published baselines prune with: uniform at the target (N/M in
    every block under N:M, even when dense exceptions lower the target), and OWL's, which needs
    the evaluator's dense statistics and an unstructured pattern (else None)."""

    uniform: tuple[float, ...]
    owl: tuple[float, ...] | None

    @classmethod
    def of(cls, config: SearchConfig, evaluator: BatchEvaluator) -> BaselinePlans:
        ratio = hand_run_sparsity(config)
        owl = None
        if not config.pattern.structured and isinstance(evaluator, OwlPlanner):
            owl = tuple(float(r) for r in evaluator.owl_plan(config.target))
        return cls((ratio,) * len(evaluator.block_params), owl)


def baseline_recipes(
    config: SearchConfig, plans: BaselinePlans
) -> list[tuple[str, Candidate, PruneConfig]]:
    """(name, the candidate that stands for it, its prune) of every published baseline that
    applies at the search's target and pattern; OWL's plan is given explicitly, so that the
    stored plan is the pruned one."""
    base = {"pattern": config.pattern, "batch_size": config.batch_size}
    options: list[tuple[str, tuple[float, ...], PlanConfig]] = [("", plans.uniform, PlanConfig())]
    if plans.owl is not None:
        owl = plans.owl
        options.append(("OWL+", owl, PlanConfig(kind="explicit", block_sparsity=owl)))
    out: list[tuple[str, Candidate, PruneConfig]] = []
    for prefix, ratios, plan in options:
        sparsity = {"sparsity": plans.uniform[0]} if not prefix else {}
        methods = [("SparseGPT", {"method": "sparsegpt"}), ("Wanda", {"method": "wanda"})]
        # OWL's plan with the refit is the per-layer baseline an allocation search must beat;
        # elsewhere its refit would be one more costly job (2:4 has no OWL plan)
        if not prefix or "allocation" in config.stage_list():
            refit = {"method": "wanda", "reconstruct": True, "refit_holdout": config.refit_holdout}
            methods.insert(1, ("Wanda+refit", refit))
        for name, kw in methods:
            recipe = PruneConfig(**base, **sparsity, **kw, plan=plan)  # type: ignore[arg-type]
            out.append((prefix + name, Candidate(WANDA_GENOME, ratios), recipe))
    return out


def held_out_name(name: str, recipe: PruneConfig, config: SearchConfig) -> str | None:
    """The held-out row a scored recipe also gives in a comparing search: Wanda's and
    SparseGPT's (the prunes a comparison measures anyway), and OWL+SparseGPT's, the strongest
    baseline at high unstructured sparsity, which costs only its forward here; else None."""
    if name == "OWL+SparseGPT":
        return OWL_SPARSEGPT
    return next((m for m in BASELINES if recipe == baseline_config(m, config)), None)


def _row_name(i: int) -> str:
    """The held-out row of the i-th finalist, until one of them is chosen."""
    return f"finalist {i}"


def _score(
    evaluator: BatchEvaluator,
    todo: list[PruneConfig],
    row_names: list[str],
    n_final: int,
    listener: Listener | None,
    held_out: HeldOutRequest | None,
) -> tuple[list[Evaluation], dict[str, HeldOutRow]]:
    """Every recipe's error as shipped (the finalists' recipes first in `todo`), in one batch.

    The batch runs the longest job first (a refit is most of the batch's critical path), then
    the finalists, then the other jobs longest first, so that the workers finish together. A
    comparing search measures every job's held-out row on the same pruned weights (a forward
    over the held-out windows, against a prune and a validation forward), and the dense model's
    in the same batch: whichever recipe is chosen on validation, its row is measured already,
    and no refit runs twice. The rows come back by `row_names` (one per recipe of `todo`).
    """
    jobs: list[ShippedJob] = [(r, None) for r in todo]
    compare = held_out is not None and isinstance(evaluator, HeldOutComparer)
    if compare:
        jobs = [(r, name) for r, name in zip(todo, row_names, strict=True)]
        jobs.append((None, "dense"))
    rest = sorted(range(n_final, len(jobs)), key=lambda i: -_relative_cost(jobs[i]))
    order = [*rest[:1], *range(n_final), *rest[1:]]
    beat = Heartbeat(logger, "scoring as shipped", len(jobs), listener=listener)

    def done(_: int, result: JobResult) -> None:
        e = result[0]
        beat.step(beat.finished + 1, e.error if e is not None else None)

    ordered = [jobs[i] for i in order]
    with beat.ticking():  # one job (a refit at a large calibration) can take minutes
        if compare:
            assert held_out is not None
            assert isinstance(evaluator, HeldOutComparer)
            got = evaluator.shipped_jobs(ordered, held_out.evaluation, held_out.ids, done)
        else:
            plain = evaluator.shipped([r for r, _ in ordered], lambda e: done(0, (e, None)))
            got = [(e, None) for e in plain]
    results: list[JobResult] = [(None, None)] * len(jobs)
    for i, r in zip(order, got, strict=True):
        results[i] = r
    evals = [e for e, _ in results[: len(todo)] if e is not None]
    rows = {row.name: row for _, row in results if row is not None}
    return evals, rows


def recommend(
    config: SearchConfig,
    evaluator: BatchEvaluator,
    finalists: Sequence[Scored],
    plans: BaselinePlans,
    listener: Listener | None = None,
    held_out: HeldOutRequest | None = None,
) -> Recommendation:
    """Score `finalists` and the baselines as shipped, in one batch; the lowest error among
    those meeting the target is recommended (a finalist off the target, the stage's closest,
    only when no baseline is measured)."""
    recipes = [candidate_recipe(s.candidate, config, evaluator) for s in finalists]
    named = baseline_recipes(config, plans) if config.fallback_baselines else []
    todo = [*recipes, *(r for _, _, r in named)]
    logger.info(
        "scoring %d finalists and %d published baselines as shipped (a prune and a forward each)",
        len(recipes),
        len(named),
    )
    # the held-out row of each recipe, in a comparing search: a finalist's by its place, a
    # baseline's by the comparison's name for it (wanda, sparsegpt, owl+sparsegpt) or its own
    row_names = [
        *(_row_name(i) for i in range(len(recipes))),
        *((held_out_name(n, r, config) or n) if held_out is not None else n for n, _, r in named),
    ]
    evals, rows = _score(evaluator, todo, row_names, len(recipes), listener, held_out)
    ranked = sorted(
        range(len(recipes)), key=lambda i: (not finalists[i].meets_target, evals[i].error)
    )
    # (the candidate as shipped, its recipe, the name of its held-out row)
    shipped = [
        (Scored(finalists[i].candidate, evals[i], finalists[i].gap), recipes[i], _row_name(i))
        for i in ranked
    ]
    bases = [
        (Scored(c, e, 0.0, name, method=name), r, row)
        for (name, c, r), e, row in zip(
            named, evals[len(recipes) :], row_names[len(recipes) :], strict=True
        )
    ]
    best = shipped[0]
    note = ""
    winner = min(bases, key=lambda sr: sr[0].evaluation.error, default=None)
    if winner is not None and (
        not best[0].meets_target or winner[0].evaluation.error < best[0].evaluation.error
    ):
        name = winner[0].name
        note = (
            f"no searched candidate beat {name} as shipped on validation "
            f"({best[0].evaluation.error:.5g} against {winner[0].evaluation.error:.5g}): "
            f"{name} is recommended and shipped"
            if best[0].meets_target
            else f"no searched candidate met the target: {name} is recommended and shipped"
        )
        logger.warning("%s", note)
        best = winner
    chosen = rows.get(best[2])  # measured on the very prune that scored it
    rows = {n: row for n, row in rows.items() if n in ("dense", *COMPARED)}
    if chosen is not None:
        rows[SEARCHED] = chosen.model_copy(update={"name": SEARCHED})
    return Recommendation(
        best[0], best[1], [s for s, _, _ in shipped], [s for s, _, _ in bases], note, rows
    )
