"""The bundled model's decoder blocks in float32 and in bfloat16 on this CPU, one thread.

Whether bfloat16 pays depends on the CPU: with native bf16 instructions (AVX512-BF16, AMX,
ARM's BF16) its forwards take about half of float32's time; with AVX2 alone every matmul is
emulated. `--dtype auto` (optishear.model.hf.torch_dtype) picks by the same capabilities that
this records beside the timings.

    python bench/dtype_speed.py --out bench/results/dtype_speed_<cpu>.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from optishear.config import CalibrationConfig
from optishear.data.text import sample_calibration
from optishear.model.blocks import capture_block_inputs, decoder_blocks, run_block
from optishear.model.hf import load_model, load_tokenizer, native_bfloat16, torch_dtype


def cpu_record() -> dict[str, Any]:
    """This CPU: its name, cores, the capabilities bfloat16's speed depends on, and what
    `--dtype auto` resolves to on it."""
    caps = torch.cpu.get_capabilities()
    names = [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    ]
    return {
        "model": names[0] if names else None,
        "cores": len(names),
        "capabilities": {
            k: bool(caps.get(k, False)) for k in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16")
        },
        "native_bfloat16": native_bfloat16(torch.device("cpu")),
        "auto": str(torch_dtype("auto", torch.device("cpu"))).removeprefix("torch."),
    }


def blocks_seconds(dtype: torch.dtype, ids: torch.Tensor, repeats: int) -> list[float]:
    """Wall time of every decoder block over the sequences, `repeats` times."""
    model, _, _ = load_model("smollm2-135m", dtype=dtype)
    inputs = capture_block_inputs(model, ids, batch_size=ids.shape[0])
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        hidden = inputs.hidden
        for block, call in zip(decoder_blocks(model), inputs.calls, strict=True):
            hidden = run_block(block, hidden, call, inputs.batch_size)
        out.append(round(time.perf_counter() - start, 3))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    tokenizer = load_tokenizer("smollm2-135m")
    ids = sample_calibration(
        tokenizer, CalibrationConfig(n_samples=args.nsamples, seq_len=args.seqlen)
    )
    record = {
        "command": "python bench/dtype_speed.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out")
        + f" --out {args.out}",
        "cpu": cpu_record(),
        "tokens": [args.nsamples, args.seqlen],
        "seconds": {
            name: blocks_seconds(getattr(torch, name), ids, args.repeats)
            for name in ("float32", "bfloat16")
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
