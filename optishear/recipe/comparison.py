"""The gain in the measure users already use: held-out perplexity of the searched model beside
Wanda's and SparseGPT's, at the same target and pattern, on the same calibration and windows.

A search's own objective (a reconstruction error against the dense model) is no unit anyone
compares models by; perplexity is. Each model is pruned in place from the dense weights and
put back bit for bit afterwards (optishear.model.backup), so the comparison costs no second copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from optishear.config import EvaluationConfig, PruneConfig, SearchConfig
from optishear.core.settings import LibrarySettings
from optishear.data.text import evaluation_stream
from optishear.evaluation.held_out import BASELINES, SEARCHED, HeldOutComparison, HeldOutRow
from optishear.evaluation.perplexity import eval_windows, perplexity
from optishear.model.backup import restored_after
from optishear.recipe.prune import ProgressFn, prune_model


def baseline_config(method: str, config: SearchConfig) -> PruneConfig:
    """The prune a user would run by hand at the search's target and pattern."""
    return PruneConfig(
        method=method,
        sparsity=config.target,
        pattern=config.pattern,
        batch_size=config.batch_size,
    )


def compare_held_out(
    model: nn.Module,
    weights: Sequence[Tensor],
    calib_ids: Tensor,
    held_out_ids: Tensor,
    shipped: PruneConfig,
    config: SearchConfig,
    *,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] | None = None,
) -> HeldOutComparison:
    """Held-out perplexity of the dense model, the model `shipped` prunes (the search's
    recommendation: optishear.search.results.SearchResult.shipped), and each baseline; `weights` (the prunable layers' weights) are back to dense afterwards.

    `held_out_ids` is the evaluation token stream (its first windows are scored, as
    optishear.evaluation.perplexity does for every figure a user sees).
    """
    start = time.perf_counter()
    evaluation: EvaluationConfig = config.evaluation
    dense = perplexity(model, held_out_ids, evaluation)
    rows = [
        HeldOutRow(
            name="dense",
            perplexity=dense.perplexity,
            sparsity=0.0,
            prune_seconds=0.0,
            window_nll=list(dense.window_nll),
        )
    ]

    def pruned(name: str, prune: Callable[[], Any]) -> None:
        with restored_after(weights):
            t0 = time.perf_counter()
            report = prune()
            seconds = time.perf_counter() - t0
            ppl = perplexity(model, held_out_ids, evaluation)
        rows.append(
            HeldOutRow(
                name=name,
                perplexity=ppl.perplexity,
                sparsity=float(report.achieved),
                prune_seconds=seconds,
                window_nll=list(ppl.window_nll),
            )
        )
        if log is not None:
            log(f"held-out perplexity of {name}: {ppl.perplexity:.3f}")

    pruned(
        SEARCHED,
        lambda: prune_model(model, calib_ids, shipped, progress=progress),
    )
    for method in BASELINES:
        prune = baseline_config(method, config)
        pruned(method, lambda p=prune: prune_model(model, calib_ids, p, progress=progress))
    windows = min(evaluation.windows, held_out_ids.numel() // evaluation.seq_len)
    protocol = {
        "eval_text": evaluation.text,
        "eval_windows": windows,
        "eval_seq_len": evaluation.seq_len,
        "eval_tokens": windows * (evaluation.seq_len - 1),
        "calibration_source": config.calibration.source,
        "calibration_samples": int(calib_ids.shape[0]),
        "calibration_seq_len": int(calib_ids.shape[1]),
        "calibration_seed": config.calibration.seed,
        "validation_share": config.calibration.validation_share,
        "validation_samples": config.full_samples() if config.calibration.validation_share else 0,
        "target": config.target,
        "pattern": str(config.pattern),
        "searched_recipe": shipped.model_dump(mode="json"),
    }
    return HeldOutComparison(
        rows=tuple(rows), protocol=protocol, seconds=time.perf_counter() - start
    )


def held_out_ids(
    tokenizer: PreTrainedTokenizerBase,
    evaluation: EvaluationConfig,
    settings: LibrarySettings | None = None,
) -> Tensor:
    """The evaluation windows as one short token stream: what travels to a worker, which scores
    the very windows of every other held-out figure (optishear.evaluation.perplexity.eval_windows)."""
    return eval_windows(evaluation_stream(tokenizer, evaluation, settings), evaluation).reshape(-1)
