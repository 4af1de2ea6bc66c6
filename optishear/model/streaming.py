"""Block streaming: decoder blocks live on the host and visit the compute device one at a time.

A model that does not fit on its device still prunes: embeddings, the final norm and the head
stay on the device, every decoder block stays in host memory (pinned, on CUDA), and a block is
copied over only while it runs, then dropped. Pruning already goes block by block, every
calibration sequence through block i before block i+1 (optishear.recipe.prune), so the device holds one
block plus the calibration activations whatever the model's size. Work on a block as a whole
(its statistics, masks and refit, or all the batches of a pass) holds it on the device once
through `onloaded`; a block that changes there is written back to the host on the way out.

`choose_execution` picks the mode from the model's size and the device's free memory, and says
why; a user can ask for either. On a CPU the host is the device, so `auto` keeps the model
resident; streaming there still runs the same code (each block is copied while it runs), which
is how the tests check that both modes give the same masks, errors and weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from optishear.model.blocks import decoder_blocks, is_skipped

logger = logging.getLogger(__name__)

Execution = Literal["auto", "resident", "streaming"]
EXECUTIONS: tuple[Execution, ...] = ("auto", "resident", "streaming")

# A resident model needs its weights and room to compute: activations, statistics, scores and
# the allocator's slack. Below this share of the free memory for the weights, auto streams.
_RESIDENT_SHARE = 0.8

_STREAMER = "_optishear_streamer"  # the attribute through which a block finds its streamer


@dataclass(frozen=True, slots=True)
class ExecutionChoice:
    mode: Literal["resident", "streaming"]
    reason: str

    def describe(self) -> str:
        return f"execution: {self.mode} ({self.reason})"


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def choose_execution(
    requested: Execution, model_bytes: int, device: torch.device
) -> ExecutionChoice:
    """Resident when the model fits its device with room to compute, else streaming."""
    if requested != "auto":
        return ExecutionChoice(requested, "as asked")
    if device.type != "cuda":
        return ExecutionChoice("resident", f"on {device.type} the host memory is the device's")
    free, _total = torch.cuda.mem_get_info(device)
    gib = 2**30
    if model_bytes <= _RESIDENT_SHARE * free:
        return ExecutionChoice(
            "resident", f"{model_bytes / gib:.1f} GiB of weights, {free / gib:.1f} GiB free"
        )
    return ExecutionChoice(
        "streaming",
        f"{model_bytes / gib:.1f} GiB of weights do not fit {_RESIDENT_SHARE:.0%} of the "
        f"{free / gib:.1f} GiB free on {device}",
    )


class BlockStreamer:
    """Keeps a model's decoder blocks on the host and runs each on `device` while it is used.

    Everything else (embeddings, final norm, head, rotary tables) moves to the device. Hooks on
    each block copy it over for its forward pass and drop the copy after, unless `onloaded`
    holds it there already. `close` leaves the whole model on the host.
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device = torch.device(device)
        self.blocks = decoder_blocks(model)
        self._model = model
        for block in self.blocks:
            block.to("cpu")
        _move_all_but(model, self.blocks, self.device)
        pin = self.device.type == "cuda"
        # Per block, its tensors (parameters and buffers) and their host copies.
        self._host: list[list[tuple[Tensor, Tensor]]] = []
        for block in self.blocks:
            pairs = []
            for t in [*block.parameters(), *block.buffers()]:
                host = t.data.pin_memory() if pin else t.data
                t.data = host
                pairs.append((t, host))
            self._host.append(pairs)
        self._depth = [0] * len(self.blocks)
        self._block_bytes = [sum(h.numel() * h.element_size() for _, h in p) for p in self._host]
        self.onloaded_bytes = 0  # block weights on the device now, and at most so far
        self.peak_onloaded_bytes = 0
        self._handles = []
        for idx, block in enumerate(self.blocks):
            setattr(block, _STREAMER, (self, idx))
            # First in, and out even when the pass stops early (our own capture hooks stop it
            # with an exception): a block is never left on the device by accident.
            # A skipped block (optishear.model.blocks.skipped) computes without its weights.
            self._handles.append(
                block.register_forward_pre_hook(
                    lambda m, _a, i=idx: None if is_skipped(m) else self._enter(i), prepend=True
                )
            )
            self._handles.append(
                block.register_forward_hook(
                    lambda m, _a, _o, i=idx: None if is_skipped(m) else self._leave(i, False),
                    always_call=True,
                )
            )

    def _enter(self, idx: int) -> None:
        if self._depth[idx] == 0:
            for t, host in self._host[idx]:
                # a copy even when the device is the host: both modes then run the same code
                t.data = host.to(self.device, copy=True, non_blocking=True)
            self.onloaded_bytes += self._block_bytes[idx]
            self.peak_onloaded_bytes = max(self.peak_onloaded_bytes, self.onloaded_bytes)
        self._depth[idx] += 1

    def _leave(self, idx: int, write: bool) -> None:
        self._depth[idx] -= 1
        if self._depth[idx] == 0:
            for t, host in self._host[idx]:
                if write:
                    host.copy_(t.data)
                t.data = host
            self.onloaded_bytes -= self._block_bytes[idx]

    @contextmanager
    def onloaded(self, idx: int, *, write: bool = False) -> Iterator[None]:
        """Block `idx` stays on the device inside; with `write`, its changes go to the host."""
        self._enter(idx)
        try:
            yield
        finally:
            self._leave(idx, write)

    @property
    def largest_block_bytes(self) -> int:
        return max(self._block_bytes)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        for block in self.blocks:
            if hasattr(block, _STREAMER):
                delattr(block, _STREAMER)
        self._model.to("cpu")


def _move_all_but(module: nn.Module, skip: nn.Module, device: torch.device) -> None:
    """Move `module` to `device`, all but `skip` (somewhere inside it), one part at a time."""
    for child in module.children():
        if child is skip:
            continue
        if any(m is skip for m in child.modules()):
            _move_all_but(child, skip, device)
        else:
            child.to(device)
    for key, p in module._parameters.items():
        if p is not None:
            module._parameters[key].data = p.data.to(device)
    for key, b in module._buffers.items():
        if b is not None:
            module._buffers[key] = b.to(device)


@contextmanager
def onloaded(block: nn.Module, *, write: bool = False) -> Iterator[None]:
    """Hold a streamed block on its device for the length of the block (a no-op when the
    model is resident)."""
    found = getattr(block, _STREAMER, None)
    if found is None:
        yield
        return
    streamer, idx = found
    with streamer.onloaded(idx, write=write):
        yield


def place_model(
    model: nn.Module, device: torch.device, requested: Execution = "auto"
) -> tuple[ExecutionChoice, BlockStreamer | None]:
    """Put a host-loaded model on `device`, whole or streamed (see `choose_execution`)."""
    choice = choose_execution(requested, weight_bytes(model), device)
    logger.debug("%s", choice.describe())  # the commands print it
    if choice.mode == "streaming":
        return choice, BlockStreamer(model, device)
    model.to(device)
    return choice, None
