"""Speed measurement: report structure, pattern detection, kernel choice, JSON, bad config."""

import dataclasses
import json
import re

import pytest
import torch
from speed_models import SMALL, pruned_copy
from tiny_models import build_tiny

from optishear.core.errors import ConfigError, DataError
from optishear.evaluation.speed import (
    SpeedConfig,
    SpeedRatio,
    SpeedReport,
    SpeedRow,
    detect_pattern,
    kernels,
    measure_model,
    measure_speed,
    no_sparse_kernel_reason,
    report,
    semi_structured_linears,
    timing,
)
from optishear.model.blocks import iter_linears

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture
def pair():
    dense = build_tiny("llama")
    return dense, pruned_copy(dense, "2:4")


def test_report_has_a_row_per_variant_and_batch_size(pair) -> None:
    dense, pruned = pair
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    report = measure_speed(dense, pruned, SMALL, device=CPU)
    assert [(r.variant, r.batch_size) for r in report.rows] == [
        ("dense", 1),
        ("pruned", 1),
        ("dense", 2),
        ("pruned", 2),
    ]
    assert {r.kernel for r in report.rows} == {"dense"}
    for r in report.rows:
        # throughput is the latency's inverse, counted in tokens of the whole batch
        assert r.prefill_tokens_per_s == pytest.approx(r.batch_size * 8 / (r.prefill_ms / 1e3))
        assert r.decode_tokens_per_s == pytest.approx(r.batch_size / (r.decode_ms_per_token / 1e3))
        assert r.prefill_ms > 0
        assert r.decode_ms_per_token > 0
    assert report.dtype == "float32"
    assert report.device.startswith("cpu")
    assert report.pattern == "2:4"
    assert report.config == SMALL.to_dict()
    after = pruned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cpu_note_says_no_sparse_kernel_applies(pair) -> None:
    report = measure_speed(*pair, SMALL, device=CPU)
    assert report.kernel_note.startswith(
        "no sparse kernel applies on cpu: the pruned model runs the dense kernels; "
        "any difference is noise"
    )
    assert "2:4, 50.0% zeros over 14 decoder linears" in report.kernel_note


def test_semi_structured_on_the_cpu_is_refused(pair) -> None:
    config = dataclasses.replace(SMALL, kernel="semi_structured")
    with pytest.raises(
        ConfigError, match="semi_structured cannot run here: no sparse kernel applies on cpu"
    ):
        measure_speed(*pair, config, device=CPU)


def test_dense_kernels_asked_for_are_noted(pair) -> None:
    report = measure_speed(*pair, dataclasses.replace(SMALL, kernel="dense"), device=CPU)
    assert report.kernel_note.startswith("dense kernels asked for: the pruned model runs")


def test_pattern_detection() -> None:
    dense = build_tiny("llama")
    assert detect_pattern(dense).pattern is None
    two_four = detect_pattern(pruned_copy(dense, "2:4"))
    assert (two_four.pattern, two_four.sparsity, two_four.n_linears) == ("2:4", 0.5, 14)
    assert len(two_four.semi_structured) == 14
    # 4:8 leaves groups of 4 with fewer than 2 zeros: no 2:4 kernel can take it
    assert detect_pattern(pruned_copy(dense, "4:8")).pattern == "unstructured"
    unstructured = detect_pattern(pruned_copy(dense, "unstructured", sparsity=0.6))
    assert unstructured.pattern == "unstructured"
    assert unstructured.sparsity == pytest.approx(0.6, abs=1e-3)


def test_a_2_4_model_with_dense_layers_is_still_2_4() -> None:
    dense = build_tiny("llama")
    mixed = pruned_copy(dense, "2:4")
    restored = {f"{i}.{n}": lin for i, n, lin in iter_linears(dense)}
    for idx, name, lin in iter_linears(mixed):
        if name == "mlp.down_proj":
            lin.weight.data.copy_(restored[f"{idx}.{name}"].weight)
    found = detect_pattern(mixed)
    assert found.pattern == "2:4"
    assert found.kept_dense == ("0.mlp.down_proj", "1.mlp.down_proj")
    assert "0.mlp.down_proj" not in found.semi_structured
    assert "(2 kept dense)" in found.describe()


def test_unstructured_report(pair) -> None:
    dense, _ = pair
    pruned = pruned_copy(dense, "unstructured")
    report = measure_speed(dense, pruned, dataclasses.replace(SMALL, batch_sizes=(1,)), device=CPU)
    assert report.pattern == "unstructured"
    assert "unstructured, 50.0% zeros" in report.kernel_note


@pytest.mark.parametrize(
    ("device", "dtype", "pattern", "capability", "expected"),
    [
        (CPU, torch.float16, "2:4", None, "no sparse kernel applies on cpu"),
        (CUDA, torch.float16, "unstructured", (9, 0), "unstructured sparsity"),
        (CUDA, torch.float16, None, (9, 0), "no pruned decoder linears"),
        (CUDA, torch.float32, "2:4", (9, 0), "float32 weights"),
        (CUDA, torch.bfloat16, "2:4", (7, 5), "compute capability 7.5"),
        (CUDA, torch.bfloat16, "2:4", (8, 0), None),
        (CUDA, torch.float16, "2:4", (9, 0), None),
    ],
)
def test_where_the_sparse_kernel_applies(device, dtype, pattern, capability, expected) -> None:
    reason = no_sparse_kernel_reason(device, dtype, pattern, capability)
    if expected is None:
        assert reason is None
    else:
        assert expected in reason


def test_semi_structured_swap_counts_skips_and_restores(pair) -> None:
    _, pruned = pair
    originals = {f"{i}.{n}": lin.weight for i, n, lin in iter_linears(pruned)}
    names = detect_pattern(pruned).semi_structured

    def convert(W):  # a stand-in kernel that, like the real one, refuses some shapes
        if W.shape[0] < 64:
            raise RuntimeError("Error original_tensor.shape is not supported!\nmore")
        return W.clone()

    with semi_structured_linears(pruned, names, convert=convert, backend="test") as conv:
        swapped = {f"{i}.{n}": lin.weight for i, n, lin in iter_linears(pruned)}
        # q, o and down take 32 outputs; k, v 16; gate and up 64
        assert sorted(conv.converted) == [
            "0.mlp.gate_proj",
            "0.mlp.up_proj",
            "1.mlp.gate_proj",
            "1.mlp.up_proj",
        ]
        assert len(conv.skipped) == 10
        assert conv.skipped["0.self_attn.q_proj"] == "Error original_tensor.shape is not supported!"
        assert swapped["0.mlp.up_proj"] is not originals["0.mlp.up_proj"]
        assert swapped["0.self_attn.q_proj"] is originals["0.self_attn.q_proj"]
    for i, n, lin in iter_linears(pruned):
        assert lin.weight is originals[f"{i}.{n}"]


def test_the_swap_restores_after_an_error(pair) -> None:
    _, pruned = pair
    originals = [lin.weight for _, _, lin in iter_linears(pruned)]
    names = detect_pattern(pruned).semi_structured
    with pytest.raises(KeyError), semi_structured_linears(pruned, names, convert=torch.clone):
        raise KeyError("boom")
    assert [lin.weight for _, _, lin in iter_linears(pruned)] == originals


@pytest.fixture
def stand_in_kernel(monkeypatch):
    """Pretend the 2:4 kernel applies on the CPU, with `convert` as the kernel's weight format:
    the control flow around the real kernel, checked without a GPU."""

    def use(convert, backend="stand-in"):
        monkeypatch.setattr(timing, "no_sparse_kernel_reason", lambda *a, **k: None)
        monkeypatch.setattr(kernels, "_semi_structured_backend", lambda: (backend, convert))

    return use


def _logit_difference(note: str) -> float:
    return float(re.search(r"against the dense kernels ([-+.0-9e]+)\)", note).group(1))


# PyTorch's CSR matmul is a real sparse kernel on the CPU: in the 2:4 kernel's place, the
# pruned model computes from the sparse weights, and the logit difference is measured.
CSR = "torch CSR on the CPU"


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_auto_runs_the_sparse_kernel_where_it_applies(pair, stand_in_kernel) -> None:
    stand_in_kernel(lambda W: W.to_sparse_csr(), CSR)
    dense, pruned = pair
    originals = [lin.weight for _, _, lin in iter_linears(pruned)]
    report = measure_speed(dense, pruned, SMALL, device=CPU)
    assert [r.kernel for r in report.rows] == ["dense", "semi_structured"] * 2
    assert report.kernel_note.startswith(
        f"14 of 14 decoder linears run 2:4 semi-structured kernels ({CSR}; max |logit "
        "difference| against the dense kernels "
    )
    # the same weights in another format: rounding only
    assert _logit_difference(report.kernel_note) < 1e-4
    assert [lin.weight for _, _, lin in iter_linears(pruned)] == originals


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_the_kernel_note_measures_what_the_sparse_weights_compute(pair, stand_in_kernel) -> None:
    # a kernel that computed from other weights (here: half of them) is caught by the note
    stand_in_kernel(lambda W: (W * 0.5).to_sparse_csr(), CSR)
    report = measure_speed(*pair, SMALL, device=CPU)
    assert _logit_difference(report.kernel_note) > 1e-2


def test_a_kernel_that_fails_on_the_model_falls_back_or_errs(pair, stand_in_kernel) -> None:
    stand_in_kernel(lambda W: W[:, :-1].contiguous())  # the forward pass fails on these
    report = measure_speed(*pair, SMALL, device=CPU)
    assert {r.kernel for r in report.rows} == {"dense"}
    assert report.kernel_note.startswith(
        "the 2:4 semi-structured kernels failed on this model (RuntimeError: "
    )
    assert "the pruned model runs the dense kernels; any difference is noise" in report.kernel_note
    config = dataclasses.replace(SMALL, kernel="semi_structured")
    with pytest.raises(
        ConfigError, match="cannot run here: the 2:4 semi-structured kernels failed"
    ):
        measure_speed(*pair, config, device=CPU)


def test_no_linear_the_kernel_takes(pair, stand_in_kernel) -> None:
    def refuse(W):
        raise RuntimeError("Error original_tensor.dtype torch.float32 is not a supported dtype")

    stand_in_kernel(refuse)
    report = measure_speed(*pair, SMALL, device=CPU)
    assert report.kernel_note.startswith(
        "no decoder linear could take the 2:4 semi-structured kernels (Error original_tensor"
    )


def _report(dense_ms: float, pruned_ms: float) -> SpeedReport:
    rows = tuple(
        SpeedRow(v, k, 4, ms, 4 * 16 / (ms / 1e3), ms / 2, 4 / (ms / 2e3))
        for v, k, ms in (("dense", "dense", dense_ms), ("pruned", "semi_structured", pruned_ms))
    )
    return SpeedReport("cuda:0 (test)", "float16", rows, "a note", "2:4", SMALL.to_dict())


def test_ratios_mark_a_slower_pruned_model() -> None:
    slower, faster = _report(10.0, 12.5).ratios(), _report(10.0, 8.0).ratios()
    assert [(q.batch_size, q.prefill, q.decode) for q in slower] == [(4, 1.25, 1.25)]
    assert (slower[0].prefill_verdict, slower[0].decode_verdict) == ("slower", "slower")
    assert faster[0].decode == pytest.approx(0.8)
    assert faster[0].decode_verdict == "faster"
    assert _report(10.0, 12.5).to_dict()["ratios"][0]["decode_verdict"] == "slower"


def test_a_slower_sparse_kernel_is_said_in_the_note() -> None:
    ratios = [SpeedRatio(1, 0.9, 1.2), SpeedRatio(8, 1.05, 0.7)]
    assert report.slower_sentence(ratios) == (
        " SLOWER than the dense kernels: prefill at batch 8 (1.050x), decode at batch 1 (1.200x)."
    )
    assert report.slower_sentence([SpeedRatio(1, 0.9, 0.8)]) == ""


def test_json_round_trip(pair) -> None:
    report = measure_speed(*pair, SMALL, device=CPU)
    again = SpeedReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report
    assert again.ratios() == report.ratios()


@pytest.mark.parametrize(
    "data",
    [{}, {"rows": "x"}, {**_report(1, 2).to_dict(), "rows": [{"variant": "other"}]}],
)
def test_a_damaged_report_is_a_data_error(data) -> None:
    with pytest.raises(DataError, match="not a speed report"):
        SpeedReport.from_dict(data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_sizes": ()}, "batch_sizes must name at least one"),
        ({"batch_sizes": (1, 0)}, r"every batch size must be an integer in \[1, 4096\], got 0"),
        ({"batch_sizes": (1, 1)}, "repeats a batch size"),
        ({"batch_sizes": (2.5,)}, "every batch size must be an integer"),
        ({"prompt_len": 0}, "prompt_len must be an integer"),
        ({"decode_tokens": 0}, "decode_tokens must be an integer"),
        ({"warmup": -1}, r"warmup must be an integer in \[0, 100\]"),
        ({"repeats": 0}, "repeats must be an integer"),
        ({"repeats": True}, "repeats must be an integer"),
        ({"kernel": "sparse"}, "kernel must be one of auto, dense, semi_structured, got 'sparse'"),
    ],
)
def test_bad_config(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        SpeedConfig(**kwargs)


def test_config_takes_a_list_of_batch_sizes() -> None:
    assert SpeedConfig(batch_sizes=[4, 1]).batch_sizes == (4, 1)


def test_too_long_for_the_model(pair) -> None:
    config = dataclasses.replace(SMALL, prompt_len=120, decode_tokens=16)
    with pytest.raises(ConfigError, match="136 exceeds the model's 128 positions"):
        measure_speed(*pair, config, device=CPU)


def test_models_of_different_shapes_are_refused(pair) -> None:
    dense, _ = pair
    other = pruned_copy(build_tiny("llama", layers=3), "2:4")
    with pytest.raises(ConfigError, match="does not have the dense model's architecture"):
        measure_speed(dense, other, SMALL, device=CPU)


def test_one_model_at_a_time(pair) -> None:
    rows = measure_model(pair[1], SMALL, device=CPU, variant="pruned")
    assert [(r.variant, r.kernel, r.batch_size) for r in rows] == [
        ("pruned", "dense", 1),
        ("pruned", "dense", 2),
    ]
