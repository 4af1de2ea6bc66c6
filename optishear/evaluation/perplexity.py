"""Held-out perplexity over fixed, non-overlapping windows of a token stream."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from optishear.config import EvaluationConfig
from optishear.core.errors import DataError
from optishear.model.blocks import inputs_of


@dataclass(frozen=True, slots=True)
class Perplexity:
    perplexity: float
    mean_nll: float
    n_windows: int
    n_tokens: int  # predicted tokens (each window predicts seq_len - 1)
    seq_len: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eval_windows(stream: Tensor, config: EvaluationConfig) -> Tensor:
    """(n_windows, seq_len): the first windows of the stream, back to back."""
    n = stream.numel() // config.seq_len
    n = min(n, config.windows)
    if n == 0:
        raise DataError(
            f"evaluation text has {stream.numel()} tokens, fewer than one {config.seq_len}-token "
            "window"
        )
    return stream[: n * config.seq_len].view(n, config.seq_len)


# Tokens whose logits are made at once. Logits are tokens x vocabulary floats: 8 windows of
# 2,048 tokens over a 262k-token vocabulary would be 17 GB at once; a chunk is 268 MB there.
_LOGIT_CHUNK_TOKENS = 256


def _nll_sum(model: nn.Module, ids: Tensor) -> float:
    """Summed next-token NLL of a batch of windows, the logits made a chunk of tokens at once
    from the lm_head inputs (the model's own logits, in one piece, where its head is no plain
    linear layer)."""
    head = model.get_output_embeddings()
    targets = ids[:, 1:].reshape(-1)
    if not isinstance(head, nn.Linear):
        logits = model(ids, use_cache=False).logits[:, :-1]
        return float(
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets, reduction="sum")
        )
    softcap = getattr(model.config, "final_logit_softcapping", None)
    hidden = inputs_of(model, head, ids)[:, :-1].reshape(len(targets), -1)
    total = 0.0
    for i in range(0, len(targets), _LOGIT_CHUNK_TOKENS):
        logits = head(hidden[i : i + _LOGIT_CHUNK_TOKENS]).float()
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        total += float(
            F.cross_entropy(logits, targets[i : i + _LOGIT_CHUNK_TOKENS], reduction="sum")
        )
    return total


@torch.no_grad()
def perplexity(model: nn.Module, stream: Tensor, config: EvaluationConfig) -> Perplexity:
    """exp(mean next-token NLL) over every predicted token of the evaluation windows."""
    start = time.perf_counter()
    windows = eval_windows(stream, config)
    device = next(model.parameters()).device
    total_nll = 0.0
    total_tokens = 0
    for i in range(0, windows.shape[0], config.batch_size):
        ids = windows[i : i + config.batch_size].to(device)
        total_nll += _nll_sum(model, ids)
        total_tokens += ids[:, 1:].numel()
    mean = total_nll / total_tokens
    return Perplexity(
        math.exp(mean),
        mean,
        windows.shape[0],
        total_tokens,
        config.seq_len,
        time.perf_counter() - start,
    )
