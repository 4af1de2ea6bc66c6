"""The gain in the measure users already use: held-out perplexity of the searched model beside
Wanda's and SparseGPT's, at the same target and pattern, on the same calibration and windows.

A search's own objective (a reconstruction error against the dense model) is no unit anyone
compares models by; perplexity is. Each model is pruned in place from the dense weights and
put back bit for bit afterwards (optishear.model.backup), so the comparison costs no second copy;
each row is measured on its own (`held_out_row`; a search's workers share the rows out, each
pruned as shipped: optishear.search.evaluator.compare_held_out).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from optishear.config import EvaluationConfig, PruneConfig, SearchConfig
from optishear.core.settings import LibrarySettings
from optishear.data.text import evaluation_stream
from optishear.evaluation.held_out import (
    BASELINES,
    COMPARED,
    SEARCHED,
    HeldOutComparison,
    HeldOutRow,
)
from optishear.evaluation.perplexity import eval_windows, perplexity
from optishear.model.backup import restored_after
from optishear.recipe.prune import ProgressFn, prune_model


def hand_run_sparsity(config: SearchConfig) -> float:
    """The uniform sparsity a user's prune by hand has at the search's target: under N:M, N/M
    in every layer, even where the search's dense exceptions lower its target (no hand-run
    prune leaves layers dense; its rows show the sparsity it has)."""
    return config.pattern.sparsity if config.pattern.structured else config.target


def baseline_config(method: str, config: SearchConfig) -> PruneConfig:
    """The prune a user would run by hand at the search's target and pattern."""
    return PruneConfig(
        method=method,
        sparsity=hand_run_sparsity(config),
        pattern=config.pattern,
        batch_size=config.batch_size,
    )


def comparison_jobs(
    shipped: PruneConfig, config: SearchConfig
) -> list[tuple[str, PruneConfig | None]]:
    """(row name, the prune that makes it; None: the dense model) of a comparison, the longest
    first (SparseGPT's prune), so that workers sharing them out finish together."""
    jobs: list[tuple[str, PruneConfig | None]] = [
        (m, baseline_config(m, config)) for m in reversed(BASELINES)
    ]
    return [*jobs, (SEARCHED, shipped), ("dense", None)]


def held_out_row(
    model: nn.Module,
    weights: Sequence[Tensor],
    calib_ids: Tensor,
    held_out_ids: Tensor,
    name: str,
    prune: PruneConfig | None,
    evaluation: EvaluationConfig,
    *,
    progress: ProgressFn | None = None,
) -> HeldOutRow:
    """Held-out perplexity of the model `prune` makes from the dense one (the dense model
    itself for None); `weights` (the prunable layers') are back to dense afterwards.

    `held_out_ids` is the evaluation token stream (its first windows are scored, as
    optishear.evaluation.perplexity does for every figure a user sees).
    """
    if prune is None:
        ppl = perplexity(model, held_out_ids, evaluation)
        return HeldOutRow(
            name=name,
            perplexity=ppl.perplexity,
            sparsity=0.0,
            prune_seconds=0.0,
            window_nll=list(ppl.window_nll),
        )
    with restored_after(weights):
        t0 = time.perf_counter()
        report = prune_model(model, calib_ids, prune, progress=progress)
        seconds = time.perf_counter() - t0
        ppl = perplexity(model, held_out_ids, evaluation)
    return HeldOutRow(
        name=name,
        perplexity=ppl.perplexity,
        sparsity=float(report.achieved),
        prune_seconds=seconds,
        window_nll=list(ppl.window_nll),
    )


def comparison_of(
    rows: Sequence[HeldOutRow],
    shipped: PruneConfig,
    config: SearchConfig,
    calib_shape: tuple[int, int],
    held_out_tokens: int,
    seconds: float,
) -> HeldOutComparison:
    """The rows (dense first), with the protocol that says how they were measured."""
    evaluation = config.evaluation
    windows = min(evaluation.windows, held_out_tokens // evaluation.seq_len)
    protocol = {
        "eval_text": evaluation.text,
        "eval_windows": windows,
        "eval_seq_len": evaluation.seq_len,
        "eval_tokens": windows * (evaluation.seq_len - 1),
        "calibration_source": config.calibration.source,
        "calibration_samples": calib_shape[0],
        "calibration_seq_len": calib_shape[1],
        "calibration_seed": config.calibration.seed,
        "validation_share": config.calibration.validation_share,
        "validation_samples": config.full_samples() if config.calibration.validation_share else 0,
        "target": config.target,
        "pattern": str(config.pattern),
        "searched_recipe": shipped.model_dump(mode="json"),
    }
    order = ["dense", SEARCHED, *COMPARED]
    ranked = sorted(rows, key=lambda r: order.index(r.name) if r.name in order else len(order))
    return HeldOutComparison(rows=tuple(ranked), protocol=protocol, seconds=seconds)


def compare_held_out(
    model: nn.Module,
    weights: Sequence[Tensor],
    calib_ids: Tensor,
    held_out_ids: Tensor,
    shipped: PruneConfig,
    config: SearchConfig,
) -> HeldOutComparison:
    """Every row of a comparison on this model, one after the other (the search's evaluators
    share the rows out: optishear.search.evaluator.compare_held_out)."""
    start = time.perf_counter()
    rows = [
        held_out_row(model, weights, calib_ids, held_out_ids, name, prune, config.evaluation)
        for name, prune in comparison_jobs(shipped, config)
    ]
    shape = (int(calib_ids.shape[0]), int(calib_ids.shape[1]))
    seconds = time.perf_counter() - start
    return comparison_of(rows, shipped, config, shape, held_out_ids.numel(), seconds)


def held_out_ids(
    tokenizer: PreTrainedTokenizerBase,
    evaluation: EvaluationConfig,
    settings: LibrarySettings | None = None,
) -> Tensor:
    """The evaluation windows as one short token stream: what travels to a worker, which scores
    the very windows of every other held-out figure (optishear.evaluation.perplexity.eval_windows)."""
    return eval_windows(evaluation_stream(tokenizer, evaluation, settings), evaluation).reshape(-1)
