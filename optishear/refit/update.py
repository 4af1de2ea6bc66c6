"""How a masked layer's surviving weights are updated, and when the calibration is too small
for a least-squares refit to fit the data rather than the sample."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from optishear.config import PruneConfig
from optishear.core.errors import ConfigError
from optishear.core.patterns import Pattern
from optishear.methods.sparsegpt import sparsegpt_prune
from optishear.model.blocks import iter_linears
from optishear.refit.reconstruct import Solver, least_squares_refit

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SurvivorUpdate:
    """How a masked layer's surviving weights change, from its dense weights and input
    Hessian: a least-squares refit, or SparseGPT's OBS update with the mask imposed (what a
    refit layer database stores, optishear.search.database)."""

    kind: Literal["lstsq", "obs"]
    solver: Solver = "cg"

    @classmethod
    def of(cls, config: PruneConfig) -> SurvivorUpdate | None:
        if config.reconstruct:
            return cls("lstsq", config.refit_solver)
        return cls("obs") if config.obs_update else None

    def apply(
        self,
        weight: Tensor,
        dense: Tensor,
        hessian: Tensor,
        mask: Tensor,
        ratio: float,
        pattern: Pattern,
        held: Tensor | None = None,
    ) -> float | None:
        """Update `weight` in place; returns the refit's damping where `held` chose it.

        `held` is the Gram matrix of held-aside calibration sequences: the dampings of
        `DAMPINGS` are tried, strongest first, and the one whose layer output is closest to the
        dense layer's on those sequences, trace((W - W0) G (W - W0)^T), is kept.
        """
        # Both reproduce the dense layer's output, so both start from the dense weights.
        weight.copy_(dense)
        if self.kind == "obs":
            sparsegpt_prune(weight, hessian, ratio, pattern, fixed_mask=mask)
            return None
        if held is None:
            least_squares_refit(weight, hessian, mask, solver=self.solver)
            return None
        best: tuple[float, float, Tensor] | None = None
        previous = None
        # Strongest damping first, each solve starting from the last one's (550 CG steps
        # against 726 from the dense survivors on 14 of the bundled model's layers,
        # bench/RESULTS.md, issue 27); the scan stops once the held-aside error stops falling.
        # A weaker damping only fits the calibration sample more closely, and the weakest are
        # the costliest solves (Qwen2.5-0.5B's down_proj: 11 CG steps at 1, 82 at 0.001); on
        # the measured layers the early stop chose what the whole scan chose (bench/RESULTS.md,
        # bench/refit_choice.py).
        for damping in sorted(DAMPINGS, reverse=True):
            weight.copy_(dense)
            least_squares_refit(
                weight, hessian, mask, percdamp=damping, solver=self.solver, start=previous
            )
            previous = weight.clone()  # never written again: the best solve keeps it too
            diff = weight.float() - dense.float()
            error = float(((diff @ held.float()) * diff).sum())
            if best is not None and error >= best[0]:
                break
            best = (error, damping, previous)
        assert best is not None
        weight.copy_(best[2])
        return best[1]


# Relative dampings (of the Gram matrix's mean diagonal) a held-aside set chooses among: from
# a near-exact fit of the calibration sample to near the dense survivors.
DAMPINGS = (0.001, 0.01, 0.1, 1.0)


# Calibration tokens per input of the widest layer below which a least-squares refit fits the
# calibration sample more than the data: on the bundled model, 16 x 128 tokens (1.3 per input of
# its 1,536-input down_proj) gave a refit held-out perplexity of 53.75 against 52.98 for the
# same search without refit (`make demo`'s settings); 32 x 256 (5.3) beat SparseGPT.
_REFIT_TOKENS_PER_INPUT = 4


def check_refit_data(model: nn.Module, calib_ids: Tensor | None, config: PruneConfig) -> None:
    """Before a least-squares refit: a warning where it may fit the sample rather than the
    data, and an error where `refit_holdout` would hold no sequence aside."""
    if not config.reconstruct or calib_ids is None:
        return
    warn_if_few_tokens(model, calib_ids)
    holdout, n = config.refit_holdout, calib_ids.shape[0]
    if holdout and n < holdout:
        raise ConfigError(
            f"refit_holdout {holdout} holds aside every {holdout}th calibration sequence: "
            f"{n} sequences hold none; give at least {holdout}"
        )


def warn_if_few_tokens(model: nn.Module, calib_ids: Tensor) -> None:
    widest = max(lin.in_features for _, _, lin in iter_linears(model))
    tokens = calib_ids.numel()
    if tokens < _REFIT_TOKENS_PER_INPUT * widest:
        logger.warning(
            "the least-squares refit sees %d calibration tokens for layers with up to %d inputs; "
            "it may fit the sample rather than the data: use at least %d tokens",
            tokens,
            widest,
            _REFIT_TOKENS_PER_INPUT * widest,
        )
