"""Find the decoder blocks of any HF causal LM, capture their inputs and run them one at a time."""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from optishear.core.errors import UnsupportedModelError
from optishear.model.spill import DEFAULT_BUDGET_BYTES, empty_like_hidden, hidden_buffer

# Where the decoder blocks sit in HF models (Llama/Mistral/Qwen/Gemma, OPT, GPT-style, NeoX,
# multimodal wrappers). The first path that holds a ModuleList wins.
_BLOCK_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "model.language_model.layers",
    "transformer.h",
    "transformer.blocks",
    "gpt_neox.layers",
)


class _StopForward(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by our own hooks to end a forward pass early; never escapes this module."""


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, in order."""
    for path in _BLOCK_PATHS:
        try:
            blocks = operator.attrgetter(path)(model)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            if not linear_sublayers(blocks[0]):
                break
            return blocks
    raise UnsupportedModelError(
        f"{type(model).__name__} has no decoder blocks with nn.Linear projections "
        f"(looked for {', '.join(_BLOCK_PATHS)})"
    )


def linear_sublayers(block: nn.Module) -> dict[str, nn.Linear]:
    """The prunable linear layers of one block, keyed by their name inside the block."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def iter_linears(model: nn.Module) -> Iterator[tuple[int, str, nn.Linear]]:
    """(block index, name inside the block, layer) for every prunable linear of the model."""
    for idx, block in enumerate(decoder_blocks(model)):
        for name, lin in linear_sublayers(block).items():
            yield idx, name, lin


def block_param_counts(model: nn.Module) -> list[int]:
    """Number of prunable weights in each block: the weights of a parameter-weighted mean."""
    return [
        sum(lin.weight.numel() for lin in linear_sublayers(b).values())
        for b in decoder_blocks(model)
    ]


@dataclass
class BlockCall:
    """How the model calls one block for a batch: extra positional args and keyword args."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    hidden_as_kwarg: bool


@dataclass
class BlockInputs:
    """Inputs of block 0 for every calibration sequence, and how each block is called."""

    hidden: Tensor  # (n_seqs, seq_len, d_model)
    calls: list[BlockCall]  # one per block, valid for batches of `batch_size` sequences
    batch_size: int


def fit_batch_size(n: int, requested: int) -> int:
    """The largest divisor of n not above `requested`: every batch then has the same shape."""
    for b in range(min(n, max(requested, 1)), 0, -1):
        if n % b == 0:
            return b
    return 1


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module,
    input_ids: Tensor,
    batch_size: int,
    *,
    memory_bytes: float = DEFAULT_BUDGET_BYTES,
) -> BlockInputs:
    """Run the embeddings for every sequence and record how each block is called.

    Block kwargs (attention masks, rotary embeddings) can differ per block (Gemma's sliding and
    global layers), so one batch runs through all blocks; the others stop at block 0. When two
    buffers of every sequence's hidden states would pass `memory_bytes`, they go to a file
    (optishear.model.spill), and so do the outputs `run_block` makes of them.
    """
    blocks = decoder_blocks(model)
    n = input_ids.shape[0]
    batch_size = fit_batch_size(n, batch_size)
    device = next(model.parameters()).device
    hidden_all: list[Tensor] = []  # one buffer, made when the first batch shows its shape
    calls: list[BlockCall | None] = [None] * len(blocks)
    record_all = True

    def pre_hook(idx: int, _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kw = dict(kwargs)
        if args:
            hidden, rest, as_kwarg = args[0], tuple(args[1:]), False
        else:
            hidden, rest, as_kwarg = kw.pop("hidden_states"), (), True
        if idx == 0:
            if not hidden_all:
                shape = (n, *hidden.shape[1:])
                hidden_all.append(
                    hidden_buffer(shape, hidden.dtype, hidden.device, budget_bytes=memory_bytes)
                )
            hidden_all[0][start : start + hidden.shape[0]] = hidden.detach()
        if record_all:
            calls[idx] = BlockCall(rest, kw, as_kwarg)
        if not record_all or idx == len(blocks) - 1:
            raise _StopForward

    handles = [
        b.register_forward_pre_hook(lambda m, a, k, i=i: pre_hook(i, m, a, k), with_kwargs=True)
        for i, b in enumerate(blocks)
    ]
    start = 0
    try:
        for start in range(0, n, batch_size):
            with contextlib.suppress(_StopForward):
                model(input_ids[start : start + batch_size].to(device), use_cache=False)
            record_all = False
    finally:
        for h in handles:
            h.remove()
    if any(c is None for c in calls):
        raise UnsupportedModelError("the model's forward pass did not call every decoder block")
    return BlockInputs(hidden_all[0], [c for c in calls if c is not None], batch_size)


@torch.no_grad()
def inputs_of(model: nn.Module, module: nn.Module, input_ids: Tensor) -> Tensor:
    """The first input `module` receives when the model runs on input_ids; the forward pass
    stops right there (e.g. the lm_head input, without paying for the logits)."""
    got: list[Tensor] = []

    def grab(_m: nn.Module, args: tuple[Any, ...]) -> None:
        got.append(args[0].detach())
        raise _StopForward

    handle = module.register_forward_pre_hook(grab)
    try:
        model(input_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not got:
        raise UnsupportedModelError(f"the forward pass never reached {type(module).__name__}")
    return got[0]


def _block_output(out: Any) -> Tensor:
    if isinstance(out, tuple | list):
        out = out[0]
    if not isinstance(out, Tensor):
        raise UnsupportedModelError(f"a decoder block returned {type(out).__name__}, not a tensor")
    return out


@torch.no_grad()
def run_block(
    block: nn.Module, hidden: Tensor, call: BlockCall, batch_size: int, *, keep_output: bool = True
) -> Tensor | None:
    """Run one block over all sequences in batches; returns the outputs if `keep_output`."""
    out = empty_like_hidden(hidden) if keep_output else None
    for start in range(0, hidden.shape[0], batch_size):
        h = hidden[start : start + batch_size]
        if call.hidden_as_kwarg:
            y = block(*call.args, hidden_states=h, **call.kwargs)
        else:
            y = block(h, *call.args, **call.kwargs)
        if out is not None:
            out[start : start + batch_size] = _block_output(y)
    return out


_SKIPPED = "_optishear_skipped"


@contextlib.contextmanager
def skipped(block: nn.Module, output: Callable[[], Any]) -> Iterator[None]:
    """Inside, `block` computes nothing: each call returns `output()` instead. Its weights are
    not used, so a block streamer (optishear.model.streaming) leaves them on the host."""
    state = vars(block)
    state["forward"] = lambda *_args, **_kwargs: output()
    state[_SKIPPED] = True
    try:
        yield
    finally:
        state.pop("forward", None)
        state.pop(_SKIPPED, None)


def is_skipped(block: nn.Module) -> bool:
    return bool(vars(block).get(_SKIPPED))
