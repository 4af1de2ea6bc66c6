"""Does a pruned model run faster? Prefill and decode latency against its dense model.

Pruning to exact zeros changes nothing for dense kernels: a zero costs what any weight costs.
Only a sparse kernel can turn sparsity into speed, and the one PyTorch ships is the 2:4
semi-structured matmul (cuSPARSELt or CUTLASS) on CUDA GPUs of compute capability 8.0 or newer,
for float16 and bfloat16 weights. `measure_speed` finds the pruned model's pattern from its
weights, swaps its 2:4 decoder linears onto that kernel where it applies (and puts them back
afterwards), times both models the same way, and says plainly which kernels ran.

The package holds the config and report records (report), pattern detection and the
semi-structured conversion (kernels) and the timing itself (timing).
"""

from optishear.evaluation.speed.kernels import (
    Conversion,
    DetectedPattern,
    detect_pattern,
    no_sparse_kernel_reason,
    semi_structured_linears,
)
from optishear.evaluation.speed.report import (
    KERNELS,
    VARIANTS,
    SpeedConfig,
    SpeedRatio,
    SpeedReport,
    SpeedRow,
    verdict,
)
from optishear.evaluation.speed.timing import check_fits, device_name, measure_model, measure_speed

__all__ = [
    "KERNELS",
    "VARIANTS",
    "Conversion",
    "DetectedPattern",
    "SpeedConfig",
    "SpeedRatio",
    "SpeedReport",
    "SpeedRow",
    "check_fits",
    "detect_pattern",
    "device_name",
    "measure_model",
    "measure_speed",
    "no_sparse_kernel_reason",
    "semi_structured_linears",
    "verdict",
]
