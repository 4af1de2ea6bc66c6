"""The engine on a CUDA device gives what it gives on the CPU.

Skipped where no GPU is present (CI); run on one with `pytest -m gpu`. The model lives on the
GPU while calibration ids stay on the CPU, as the CLI hands them over.
"""

import pytest
import torch
from tiny_models import build_tiny, tiny_tokenizer
from transformers import AutoModelForCausalLM

from optishear.artifacts.export import export_checkpoint
from optishear.config import PruneConfig, SearchConfig
from optishear.core.genome import Genome
from optishear.core.patterns import Pattern
from optishear.model.blocks import iter_linears
from optishear.recipe.candidates import Candidate
from optishear.recipe.prune import prune_model
from optishear.search.evaluator import InProcessEvaluator
from optishear.search.fitness import FitnessEngine
from optishear.search.loop import run_search

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")
GENOME = Genome.parse("f1=sqrt,beta=inv_col_sum")


def _masks(model) -> dict[str, torch.Tensor]:
    return {f"{i}.{n}": (lin.weight == 0).cpu() for i, n, lin in iter_linears(model)}


def _agreement(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    same = sum(int((a[k] == b[k]).sum()) for k in a)
    return same / sum(m.numel() for m in a.values())


def _config(method: str, pattern: str, **kw) -> PruneConfig:
    genome = GENOME if method == "meta" else None
    return PruneConfig(method=method, sparsity=0.5, pattern=pattern, genome=genome, **kw)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "ria", "meta"])
def test_masks_on_cuda_match_the_cpu(method, pattern, calib_ids) -> None:
    cpu, gpu = build_tiny("llama", layers=3), build_tiny("llama", layers=3).to(CUDA)
    on_cpu = prune_model(cpu, calib_ids, _config(method, pattern))
    on_gpu = prune_model(gpu, calib_ids, _config(method, pattern))
    assert on_gpu.achieved == on_cpu.achieved == 0.5
    assert next(gpu.parameters()).device.type == "cuda"
    # GPU reductions sum in another order: a float near-tie may flip, nothing more
    assert _agreement(_masks(cpu), _masks(gpu)) >= 0.995
    if pattern != "unstructured":
        p = Pattern.parse(pattern)
        for mask in _masks(gpu).values():
            groups = mask.reshape(mask.shape[0], -1, p.m).sum(-1)
            assert torch.all(groups == p.n)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_weight_updates_on_cuda_match_the_cpu(pattern, calib_ids) -> None:
    for method, kw in (("sparsegpt", {}), ("wanda", {"reconstruct": True})):
        cpu, gpu = build_tiny("llama", layers=3), build_tiny("llama", layers=3).to(CUDA)
        assert prune_model(gpu, calib_ids, _config(method, pattern, **kw)).achieved == 0.5
        prune_model(cpu, calib_ids, _config(method, pattern, **kw))
        with torch.no_grad():
            a = cpu(calib_ids, use_cache=False).logits
            b = gpu(calib_ids.to(CUDA), use_cache=False).logits.cpu()
        assert float((a - b).norm() / a.norm()) < 1e-3, method


def test_fitness_engine_and_search_on_cuda_match_the_cpu(calib_ids) -> None:
    engines = [
        FitnessEngine(build_tiny("llama", layers=4).to(device), calib_ids, Pattern())
        for device in ("cpu", CUDA)
    ]
    cand = Candidate(GENOME, (0.4, 0.5, 0.5, 0.6))
    cpu_e, gpu_e = (e.evaluate(cand) for e in engines)
    assert gpu_e.sparsity == cpu_e.sparsity == 0.5
    assert gpu_e.error == pytest.approx(cpu_e.error, rel=1e-3)
    dense = build_tiny("llama", layers=4)
    for (_, _, lin), (_, _, ref) in zip(
        iter_linears(engines[1].model), iter_linears(dense), strict=True
    ):
        assert torch.equal(lin.weight.cpu(), ref.weight)  # restored after the evaluation

    settings = SearchConfig(model="tiny", sparsity=0.5, population=6, generations=2, seed=2)
    first, again = (run_search(InProcessEvaluator(engines[1]), settings) for _ in range(2))
    assert [(s.candidate, s.evaluation.error) for s in first.front] == [
        (s.candidate, s.evaluation.error) for s in again.front
    ]
    assert first.recommended.meets_target


def test_export_from_cuda_reloads_on_the_cpu_with_the_same_weights(tmp_path, calib_ids) -> None:
    gpu = build_tiny("llama").to(CUDA)
    report = prune_model(gpu, calib_ids, _config("wanda", "2:4"))
    export_checkpoint(gpu, tiny_tokenizer(), tmp_path / "ckpt", {"prune": report.to_dict()})
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    for name, tensor in gpu.state_dict().items():
        assert torch.equal(tensor.cpu(), reloaded.state_dict()[name]), name
