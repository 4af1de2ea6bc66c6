"""Speed on a CUDA GPU: PyTorch's 2:4 semi-structured kernels run, match the dense kernels'
logits, and float32 says why it runs the dense ones (marked gpu: CI has no GPU)."""

import dataclasses

import pytest
import torch
from speed_models import SMALL, pruned_copy
from tiny_models import build_tiny

from optishear.core.errors import ConfigError
from optishear.evaluation.speed import (
    SpeedConfig,
    detect_pattern,
    measure_speed,
    semi_structured_linears,
)
from optishear.model.blocks import iter_linears

CUDA = torch.device("cuda")


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _gpu_pair(dtype):
    # 128 wide: every projection fits both backends' minimum shapes (CUTLASS: 32 x 64)
    dense = build_tiny("llama", hidden=128).to(CUDA, dtype)
    return dense, pruned_copy(dense, "2:4")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_semi_structured_kernels_on_cuda(dtype) -> None:
    dense, pruned = _gpu_pair(dtype)
    originals = [lin.weight for _, _, lin in iter_linears(pruned)]
    config = SpeedConfig(
        batch_sizes=(1, 8), prompt_len=64, decode_tokens=4, kernel="semi_structured"
    )
    report = measure_speed(dense, pruned, config, device=CUDA)
    assert [(r.variant, r.kernel) for r in report.rows[:2]] == [
        ("dense", "dense"),
        ("pruned", "semi_structured"),
    ]
    assert report.kernel_note.startswith("14 of 14 decoder linears run 2:4 semi-structured")
    assert report.device.startswith("cuda:")
    assert report.dtype == str(dtype).removeprefix("torch.")
    assert [lin.weight for _, _, lin in iter_linears(pruned)] == originals
    assert len(report.ratios()) == 2
    auto = measure_speed(dense, pruned, dataclasses.replace(config, kernel="auto"), device=CUDA)
    assert auto.rows[1].kernel == "semi_structured"


@pytest.mark.gpu
@needs_cuda
def test_semi_structured_logits_match_the_dense_kernels() -> None:
    _, pruned = _gpu_pair(torch.float16)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0)).to(CUDA)
    with torch.no_grad():
        reference = pruned(input_ids=ids).logits.float()
        with semi_structured_linears(pruned, detect_pattern(pruned).semi_structured) as conv:
            assert len(conv.converted) == 14
            assert not conv.skipped
            assert all(
                isinstance(lin.weight, torch.sparse.SparseSemiStructuredTensor)
                for _, _, lin in iter_linears(pruned)
            )
            logits = pruned(input_ids=ids).logits.float()
    assert torch.allclose(logits, reference, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@needs_cuda
def test_float32_on_cuda_runs_dense_kernels_and_says_why() -> None:
    dense = build_tiny("llama", hidden=128).to(CUDA)
    pruned = pruned_copy(dense, "2:4")
    report = measure_speed(dense, pruned, SMALL, device=CUDA)
    assert {r.kernel for r in report.rows} == {"dense"}
    assert report.kernel_note.startswith("no sparse kernel applies to float32 weights")
    with pytest.raises(ConfigError, match="float32"):
        measure_speed(
            dense, pruned, dataclasses.replace(SMALL, kernel="semi_structured"), device=CUDA
        )
