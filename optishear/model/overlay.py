"""A candidate's weights laid over a dense model at forward time, so the dense weights are kept once.

The fitness engine scores thousands of candidates on one model. Writing each candidate's masked
weights into the layers needs the dense weights a second time to come back from; laying the
candidate over the layers instead (each linear computes with `W.masked_fill(mask, 0)`, or with
a stored substitute such as a refit layer of the layer database) keeps only the dense model, and
one layer's masked weights for the length of its matmul. On a GPU that is the difference
between a model that fits twice and one that fits once.

The masked weight is made once per forward call, a batch of sequences at a time, which costs a
pass over the layer: far less than the matmul itself at any useful batch (bench/HISTORY.md, issue 16).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MethodType

import torch
from torch import Tensor, nn
from torch.nn import functional as F

_MASK = "_overlay_mask"
_WEIGHT = "_overlay_weight"


def _current_weight(lin: nn.Linear) -> Tensor:
    """The weight `lin` computes with now, on its weight's device.

    A streamed block (optishear.model.streaming) computes on a device copy of its weights, while
    masks and substitutes stay on the host with the rest of the block.
    """
    weight = lin.__dict__.get(_WEIGHT)
    if weight is not None:
        return weight.to(lin.weight.device, non_blocking=True)
    mask = lin.__dict__.get(_MASK)
    if mask is None:
        return lin.weight
    return lin.weight.masked_fill(mask.to(lin.weight.device, non_blocking=True), 0.0)


def _overlaid_forward(self: nn.Linear, x: Tensor) -> Tensor:
    # The state lives on the layer and the method is bound to it, so that a deep copy of the
    # model is a model of its own that computes as the original does now.
    return F.linear(x, _current_weight(self), self.bias)


class WeightOverlay:
    """Per linear, nothing (its own weight), a mask of weights to zero, or a substitute weight.

    Installing it shadows each layer's `forward` on the instance (plain `nn.Linear` only, whose
    forward is exactly `F.linear`); `close` takes the shadows off. While it is installed, the
    layers' own weights must stay dense: code that prunes in place clears the overlay first.
    """

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        for lin in linears:
            if type(lin).forward is not nn.Linear.forward:
                raise TypeError(f"{type(lin).__name__} has its own forward; cannot overlay it")
        self._linears = list(linears)
        for lin in self._linears:
            vars(lin)["forward"] = MethodType(_overlaid_forward, lin)
        self.clear()

    def set_mask(self, pos: int, mask: Tensor | None) -> None:
        """Zero the weights where `mask` is True (None: the layer's own weights); the mask is
        kept where the layer's weight is kept."""
        lin = self._linears[pos]
        state = vars(lin)
        state[_MASK] = None if mask is None else mask.to(lin.weight.device, non_blocking=True)
        state[_WEIGHT] = None

    def set_weight(self, pos: int, weight: Tensor) -> None:
        """Compute with `weight` instead of the layer's own (same shape; moved to its device and
        dtype)."""
        lin = self._linears[pos]
        if weight.shape != lin.weight.shape:
            raise ValueError(
                f"layer {pos}: a weight of shape {tuple(weight.shape)} for "
                f"{tuple(lin.weight.shape)}"
            )
        state = vars(lin)
        state[_WEIGHT] = weight.to(device=lin.weight.device, dtype=lin.weight.dtype)
        state[_MASK] = None

    def clear(self) -> None:
        """Every layer computes with its own weights again."""
        for lin in self._linears:
            state = vars(lin)
            state[_MASK] = None
            state[_WEIGHT] = None

    @torch.no_grad()
    def effective_weight(self, pos: int) -> Tensor:
        """The weight layer `pos` computes with now (a new tensor where overlaid)."""
        return _current_weight(self._linears[pos]).detach()

    def close(self) -> None:
        for lin in self._linears:
            for key in ("forward", _MASK, _WEIGHT):
                vars(lin).pop(key, None)
