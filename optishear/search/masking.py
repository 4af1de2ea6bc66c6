"""Every layer's mask for a candidate, scored from the engine's statistics, with a cache.

A layer-wise stage revisits the same (genome, layer, ratio) masks again and again, so they are
kept, packed 8 to a byte (1/32 of the fp32 weights they mask), least recently used first out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor

from optishear.core.patterns import Pattern
from optishear.methods.masks import pack_mask, prune_mask, unpack_mask
from optishear.methods.meta import meta_log_score
from optishear.recipe.candidates import Candidate

MaskKey = tuple[int, int, float]  # row-canonical genome index, layer position, ratio


class MaskCache:
    """Packed masks by key, within a byte budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self._masks: OrderedDict[MaskKey, Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._masks)

    def get(self, key: MaskKey, shape: torch.Size) -> Tensor | None:
        packed = self._masks.get(key)
        if packed is None:
            return None
        self._masks.move_to_end(key)
        return unpack_mask(packed, shape)

    def remember(self, key: MaskKey, mask: Tensor) -> None:
        packed = pack_mask(mask)  # a copy of its own: evicting it frees it
        if packed.numel() > self.budget:
            return
        self._masks[key] = packed
        self.bytes += packed.numel()
        while self.bytes > self.budget:
            _, old = self._masks.popitem(last=False)
            self.bytes -= old.numel()

    def clear(self) -> None:
        self._masks.clear()
        self.bytes = 0


class CandidateMasks:
    """Masks a candidate's layers from their dense weights and scoring statistics.

    Equally shaped layers (the same projection of every block) form a group whose statistics
    are stacked, so that a GPU scores a group with a few large kernels instead of hundreds of
    small ones; `chunk_elements` bounds the weights scored at once (0: a layer at a time, the
    faster choice on a CPU, where the temporaries stay in cache).
    """

    def __init__(
        self,
        dense: list[Tensor],
        groups: list[list[int]],
        act_stacks: list[Tensor],
        rho_stacks: list[Tensor] | None,
        pattern: Pattern,
        *,
        cache_bytes: int,
        chunk_elements: int,
    ) -> None:
        self.dense = dense
        self.groups = groups
        self.act_stacks = act_stacks
        self.rho_stacks = rho_stacks
        self.pattern = pattern
        self.chunk_elements = chunk_elements
        self.cache = MaskCache(cache_bytes)

    def masks(
        self, candidate: Candidate, ratio_of: Callable[[Candidate, int], float]
    ) -> list[Tensor | None]:
        """Every layer's mask for the candidate (None for a dense layer): cached ones looked up,
        the others computed a stack of equally shaped layers with equal sparsity at a time."""
        canonical = candidate.genome.row_canonical().index
        masks: list[Tensor | None] = [None] * len(self.dense)
        rho_stacks = self.rho_stacks or [None] * len(self.groups)
        for group, act, rho in zip(self.groups, self.act_stacks, rho_stacks, strict=True):
            missing: dict[float, list[int]] = {}  # ratio -> indices into the group
            shape = self.dense[group[0]].shape
            for j, pos in enumerate(group):
                ratio = round(ratio_of(candidate, pos), 9)
                if ratio == 0:  # a dense layer
                    masks[pos] = None
                    continue
                cached = self.cache.get((canonical, pos, ratio), shape)
                if cached is None:
                    missing.setdefault(ratio, []).append(j)
                else:
                    masks[pos] = cached
            per_chunk = max(1, self.chunk_elements // shape.numel())
            for ratio, js in missing.items():
                for c in range(0, len(js), per_chunk):
                    chunk = js[c : c + per_chunk]
                    # a stack only of the chunk (on a GPU, bounded by chunk_elements)
                    W = torch.stack([self.dense[group[j]] for j in chunk]).to(act.device)
                    if len(chunk) == len(group):
                        X, R = act, rho
                    else:
                        idx = torch.tensor(chunk, device=act.device)
                        X = act[idx]
                        R = rho[idx] if rho is not None else None
                    score = meta_log_score(W, X, candidate.genome, R)
                    del W
                    mask = prune_mask(score.flatten(0, 1), ratio, self.pattern).view(score.shape)
                    for b, j in enumerate(chunk):
                        masks[group[j]] = mask[b]
                        self.cache.remember((canonical, group[j], ratio), mask[b])
        return masks
