"""Block outputs of recent candidates, so that a candidate starts at the first block it changes.

A per-layer allocation or layer-wise search mutates a few layers of a parent: every block before
the first changed one computes, for the child, exactly what it computed for the parent. So the
outputs of each evaluated candidate's blocks are kept (within a byte budget, least recently used
first out), and a candidate whose first blocks carry the same layers as a kept one's starts its
forward pass at the first block that differs: the earlier blocks return the kept outputs instead
of computing them. A genome of the metric stage changes every layer and gains nothing; a
(1+lambda) child of two changed layers skips a third of the model on average.

Reuse is exact, bit for bit: an entry serves only the same sequences, tokens and batches (the
same fidelity), so the skipped blocks' outputs are what they would have computed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from optishear.model.blocks import skipped
from optishear.recipe.candidates import Candidate

BlockKey = Hashable  # what decides a block's weights (its layers' masks or substitutes)
Fidelity = tuple[int, int]  # sequences, tokens


@dataclass
class _Entry:
    keys: tuple[BlockKey, ...]
    outputs: dict[int, Tensor] = field(default_factory=dict)  # block -> (n, t, d) outputs
    tuple_output: bool = False  # the blocks return (hidden, ...), as older transformers do


@dataclass
class PrefixStats:
    """Blocks run and skipped since the engine started (benchmarks read them)."""

    run: int = 0
    skipped: int = 0


class PrefixStates:
    """Kept block outputs of recent candidates, and the forward pass that reuses them."""

    def __init__(self, blocks: nn.ModuleList, budget: int) -> None:
        """`budget`: bytes the kept outputs may take (0: nothing is kept). One candidate keeps
        at most half of it, every `stride`-th block's outputs where all would not fit."""
        self.blocks = blocks
        self.budget = budget
        self.stats = PrefixStats()
        self._entries: OrderedDict[tuple[Fidelity, tuple[BlockKey, ...]], _Entry] = OrderedDict()

    def clear(self) -> None:
        self._entries.clear()

    @property
    def bytes(self) -> int:
        """Bytes kept: entries share the tensors of their common prefix."""
        seen = {id(t): t for e in self._entries.values() for t in e.outputs.values()}
        return sum(t.numel() * t.element_size() for t in seen.values())

    def run(
        self, keys: Sequence[BlockKey], fidelity: Fidelity, forward: Callable[[], Tensor]
    ) -> Tensor:
        """`forward()` (the model's forward pass over the fitness sequences, a batch at a time)
        with the blocks that `keys` shares with a kept candidate skipped; this candidate's
        outputs are kept in turn."""
        keys = tuple(keys)
        if self.budget <= 0 or len(keys) != len(self.blocks):
            self.stats.run += len(self.blocks)
            return forward()
        start, source = self._longest_prefix(keys, fidelity)
        entry = _Entry(keys)
        if source is not None:  # the shared prefix's tensors, not copies
            entry.outputs = {b: t for b, t in source.outputs.items() if b < start}
            entry.tuple_output = source.tuple_output
        with self._hooked(start, source, entry, fidelity[0]):
            hidden = forward()
        self.stats.run += len(self.blocks) - start
        self.stats.skipped += start
        self._keep(fidelity, entry)
        return hidden

    def _longest_prefix(
        self, keys: tuple[BlockKey, ...], fidelity: Fidelity
    ) -> tuple[int, _Entry | None]:
        """The block to start at (0: all run) and the kept entry whose outputs feed it."""
        best, source, source_key = 0, None, None
        for key, entry in self._entries.items():
            if key[0] != fidelity:
                continue
            same = 0
            while same < len(keys) and entry.keys[same] == keys[same]:
                same += 1
            # start after the last kept output inside the shared prefix
            start = max((b + 1 for b in entry.outputs if b < same), default=0)
            if start > best:
                best, source, source_key = start, entry, key
        if source_key is not None:
            self._entries.move_to_end(source_key)
        return best, source

    def _stride(self, boundary_bytes: int) -> int:
        """Keep every stride-th block's outputs, so that one candidate takes <= budget / 2."""
        return max(1, math.ceil(len(self.blocks) * boundary_bytes / max(1, self.budget // 2)))

    @contextmanager
    def _hooked(
        self, start: int, source: _Entry | None, entry: _Entry, n_rows: int
    ) -> Iterator[None]:
        """Blocks before `start` return the source's outputs of block start - 1; every kept
        block (from `start` on) writes its outputs into `entry`. The rows of a batch follow
        the order of the forward calls, counted where block 0 is entered."""
        rows = [0, 0]  # this batch's first row, the next batch's first row
        stride: list[int] = []

        def enter(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            rows[0], rows[1] = rows[1], rows[1] + hidden.shape[0]

        def kept_output() -> Any:
            assert source is not None
            # a copy: a block may add to its input in place, and the kept outputs must stay
            y = source.outputs[start - 1][rows[0] : rows[1]].clone()
            return (y,) if source.tuple_output else y

        def record(idx: int, out: Any) -> None:
            entry.tuple_output = isinstance(out, tuple | list)
            y = out[0] if entry.tuple_output else out
            if not stride:  # fixed by the first block seen: all boundaries are equal
                stride.append(self._stride(y[0].numel() * y.element_size() * n_rows))
            if (idx + 1) % stride[0] and idx != len(self.blocks) - 1:
                return
            kept = entry.outputs.get(idx)
            if kept is None:
                kept = entry.outputs[idx] = y.new_empty((n_rows, *y.shape[1:]))
            kept[rows[0] : rows[1]] = y

        with ExitStack() as stack:
            first = self.blocks[0].register_forward_pre_hook(enter, with_kwargs=True)
            stack.callback(first.remove)
            for idx, block in enumerate(self.blocks):
                if idx < start:
                    stack.enter_context(skipped(block, kept_output))
                else:
                    h = block.register_forward_hook(lambda _m, _a, out, i=idx: record(i, out))
                    stack.callback(h.remove)
            yield

    def _keep(self, fidelity: Fidelity, entry: _Entry) -> None:
        key = (fidelity, entry.keys)
        self._entries.pop(key, None)
        self._entries[key] = entry
        while len(self._entries) > 1 and self.bytes > self.budget:
            self._entries.popitem(last=False)
        if self.bytes > self.budget:
            self._entries.clear()


def block_keys(
    genome_index: int, layer_blocks: Sequence[int], ratios: Sequence[float], n_blocks: int
) -> list[BlockKey]:
    """Per block, what decides its weights: the genome and its layers' ratios (in layer
    order), for candidates of one engine and one way of laying them (masks or database)."""
    keys: list[list[Hashable]] = [[genome_index] for _ in range(n_blocks)]
    for block, ratio in zip(layer_blocks, ratios, strict=True):
        keys[block].append(round(ratio, 9))
    return [tuple(k) for k in keys]


def prefix_order(candidates: Sequence[Candidate]) -> list[int]:
    """Indices of `candidates` in an order where each shares the longest first blocks with
    the one before it (lexicographic in genome, then layer by layer): evaluated in it, a batch
    of mutants of one parent reuses the most block outputs. Scores do not depend on order."""
    return sorted(range(len(candidates)), key=lambda i: candidates[i].key())


def in_order(order: Sequence[int], results: Sequence[Any]) -> list[Any]:
    """`results`, computed in `order`, back in the candidates' own order."""
    out: list[Any] = [None] * len(order)
    for i, r in zip(order, results, strict=True):
        out[i] = r
    return out
