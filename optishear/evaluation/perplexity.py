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
    # Each window's mean NLL (all predict seq_len - 1 tokens): the paired differences between
    # two models give their gain's standard error (optishear.evaluation.held_out).
    window_nll: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("window_nll")
        return data


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


def _nll_per_window(model: nn.Module, ids: Tensor) -> Tensor:
    """Summed next-token NLL of each window of a batch, the logits made a chunk of tokens at
    once from the lm_head inputs (the model's own logits, in one piece, where its head is no
    plain linear layer)."""
    head = model.get_output_embeddings()
    targets = ids[:, 1:].reshape(-1)
    if not isinstance(head, nn.Linear):
        logits = model(ids, use_cache=False).logits[:, :-1]
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets, reduction="none"
        )
        return nll.view(ids.shape[0], -1).sum(-1).double().cpu()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    hidden = inputs_of(model, head, ids)[:, :-1].reshape(len(targets), -1)
    parts = []
    for i in range(0, len(targets), _LOGIT_CHUNK_TOKENS):
        logits = head(hidden[i : i + _LOGIT_CHUNK_TOKENS]).float()
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        parts.append(
            F.cross_entropy(logits, targets[i : i + _LOGIT_CHUNK_TOKENS], reduction="none")
        )
    return torch.cat(parts).view(ids.shape[0], -1).double().sum(-1).cpu()


@torch.no_grad()
def perplexity(model: nn.Module, stream: Tensor, config: EvaluationConfig) -> Perplexity:
    """exp(mean next-token NLL) over every predicted token of the evaluation windows."""
    start = time.perf_counter()
    windows = eval_windows(stream, config)
    device = next(model.parameters()).device
    sums = torch.cat(
        [
            _nll_per_window(model, windows[i : i + config.batch_size].to(device))
            for i in range(0, windows.shape[0], config.batch_size)
        ]
    )
    total_tokens = windows.shape[0] * (config.seq_len - 1)
    mean = float(sums.sum()) / total_tokens
    return Perplexity(
        math.exp(mean),
        mean,
        windows.shape[0],
        total_tokens,
        config.seq_len,
        time.perf_counter() - start,
        tuple(float(x) for x in sums / (config.seq_len - 1)),
    )
