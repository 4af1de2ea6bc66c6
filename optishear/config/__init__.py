"""Every setting of a calibration, an evaluation, a prune and a search: defaults and rules, once.

These pydantic models are the one typed config. The library reads them directly, the API's
request model extends `SearchConfig`, and the command lines generate their flags from them
(`optishear.cli.flags`): a new setting is one field here. No torch is imported, so the API
validates a request without loading the maths. Each field's `flag` (in `json_schema_extra`)
is its command-line name where that differs from the field's name.

The package holds the shared field types (base, fields), calibration and evaluation text
(calibration), one prune (prune) and a search (search). It imports optishear.core only.
"""

from optishear.config.base import (
    BUNDLED,
    DTYPES,
    METHODS,
    Dtype,
    Method,
    Objective,
    Seed,
    Stages,
    Text,
    config_error,
    default_sparsity,
    validation_message,
)
from optishear.config.calibration import (
    CalibrationConfig,
    EvaluationConfig,
    SearchCalibrationConfig,
)
from optishear.config.prune import PlanConfig, PruneConfig, Update
from optishear.config.search import AllocationConfig, ScreenConfig, SearchConfig

__all__ = [
    "BUNDLED",
    "DTYPES",
    "METHODS",
    "AllocationConfig",
    "CalibrationConfig",
    "Dtype",
    "EvaluationConfig",
    "Method",
    "Objective",
    "PlanConfig",
    "PruneConfig",
    "ScreenConfig",
    "SearchCalibrationConfig",
    "SearchConfig",
    "Seed",
    "Stages",
    "Text",
    "Update",
    "config_error",
    "default_sparsity",
    "validation_message",
]
