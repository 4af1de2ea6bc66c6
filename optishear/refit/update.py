"""How a masked layer's surviving weights are updated, and when the calibration is too small
for a least-squares refit to fit the data rather than the sample."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from optishear.config import PruneConfig
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
    ) -> None:
        # Both reproduce the dense layer's output, so both start from the dense weights.
        weight.copy_(dense)
        if self.kind == "lstsq":
            least_squares_refit(weight, hessian, mask, solver=self.solver)
        else:
            sparsegpt_prune(weight, hessian, ratio, pattern, fixed_mask=mask)


# Calibration tokens per input of the widest layer below which a least-squares refit fits the
# calibration sample more than the data: on the bundled model, 16 x 128 tokens (1.3 per input of
# its 1,536-input down_proj) gave a refit held-out perplexity of 53.75 against 52.98 for the
# same search without refit (`make demo`'s settings); 32 x 256 (5.3) beat SparseGPT.
_REFIT_TOKENS_PER_INPUT = 4


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
