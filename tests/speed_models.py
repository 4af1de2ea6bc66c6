"""What the speed tests share: a small timing config and a pruned copy of a model."""

import copy

from torch import nn

from optishear.config import PruneConfig
from optishear.evaluation.speed import SpeedConfig
from optishear.recipe.prune import prune_model

SMALL = SpeedConfig(batch_sizes=(1, 2), prompt_len=8, decode_tokens=3, warmup=0, repeats=1)


def pruned_copy(
    model: nn.Module, pattern: str, method: str = "magnitude", sparsity: float = 0.5
) -> nn.Module:
    pruned = copy.deepcopy(model)
    prune_model(pruned, None, PruneConfig(method=method, sparsity=sparsity, pattern=pattern))
    return pruned
