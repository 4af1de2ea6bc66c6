import pytest
import torch
from tiny_models import ARCHS, build_tiny
from torch import nn

from optishear.core.errors import UnsupportedModelError
from optishear.model.blocks import (
    capture_block_inputs,
    decoder_blocks,
    fit_batch_size,
    linear_sublayers,
    run_block,
)


@pytest.mark.parametrize("arch", ARCHS)
def test_blockwise_run_matches_full_forward(arch: str, calib_ids) -> None:
    model = build_tiny(arch)
    blocks = decoder_blocks(model)
    expected = []
    hooks = [
        b.register_forward_hook(
            lambda _m, _a, out: expected.append(out[0] if isinstance(out, tuple) else out)
        )
        for b in blocks
    ]
    with torch.no_grad():
        for i in range(0, calib_ids.shape[0], 4):
            model(calib_ids[i : i + 4], use_cache=False)
    for h in hooks:
        h.remove()
    per_block = [torch.cat(expected[i :: len(blocks)]) for i in range(len(blocks))]

    inputs = capture_block_inputs(model, calib_ids, batch_size=4)
    hidden = inputs.hidden
    for idx, block in enumerate(blocks):
        hidden = run_block(block, hidden, inputs.calls[idx], inputs.batch_size)
        torch.testing.assert_close(hidden, per_block[idx], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_linear_sublayers_found(arch: str) -> None:
    block = decoder_blocks(build_tiny(arch))[0]
    names = set(linear_sublayers(block))
    assert len(names) >= 6
    assert not any("lm_head" in n for n in names)


def test_unsupported_model() -> None:
    with pytest.raises(UnsupportedModelError, match="no decoder blocks"):
        decoder_blocks(nn.Sequential(nn.Linear(2, 2)))


def test_fit_batch_size() -> None:
    assert fit_batch_size(32, 8) == 8
    assert fit_batch_size(30, 8) == 6
    assert fit_batch_size(7, 8) == 7
    assert fit_batch_size(13, 4) == 1
