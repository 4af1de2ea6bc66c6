"""Where calibration and held-out text come from, and how much of it."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from optishear.config.base import BUNDLED, ConfigModel, Seed, Text, flag


class CalibrationConfig(ConfigModel):
    """Calibration: how many sequences of how many tokens, from which text, with which seed."""

    source: Text = Field(
        BUNDLED,
        description="calibration text: 'wiki' (bundled), a .txt/.jsonl file or hf:NAME",
        json_schema_extra=flag("calib"),
    )
    n_samples: int = Field(
        32, ge=1, le=1024, description="calibration sequences", json_schema_extra=flag("nsamples")
    )
    seq_len: int = Field(
        256, ge=8, le=8192, description="tokens per sequence", json_schema_extra=flag("seqlen")
    )
    seed: Seed = Field(
        0, description="seed of the sequences' offsets", json_schema_extra=flag("calib-seed")
    )


class SearchCalibrationConfig(CalibrationConfig):
    """A search's calibration: fewer sequences by default than a prune's, as each candidate
    is scored on them (every other field as in CalibrationConfig)."""

    # A CalibrationConfig given by a caller is taken field by field.
    model_config = ConfigDict(from_attributes=True)

    n_samples: int = Field(
        16, ge=1, le=1024, description="calibration sequences", json_schema_extra=flag("nsamples")
    )
    validation_share: float = Field(
        0.1,
        ge=0,
        le=0.5,
        description="share of the calibration text (its end) held aside: the validation "
        "sequences that score and select candidates come from it, and no statistic, Hessian "
        "or refit ever sees it (0: candidates are scored on calibration sequences)",
        json_schema_extra=flag("validation-share"),
    )


class EvaluationConfig(ConfigModel):
    """Held-out perplexity: fixed windows of text the pruning never saw."""

    text: Text = Field(
        BUNDLED,
        description="held-out text: 'wiki' (bundled), a .txt/.jsonl file or hf:NAME",
        json_schema_extra=flag("eval-text"),
    )
    seq_len: int = Field(
        512, ge=2, le=8192, description="tokens per window", json_schema_extra=flag("eval-seqlen")
    )
    windows: int = Field(
        64, ge=1, le=4096, description="at most this many windows",
        json_schema_extra=flag("eval-windows"),
    )  # fmt: skip
    batch_size: int = Field(
        4, ge=1, le=256, description="windows per forward pass",
        json_schema_extra=flag("eval-batch-size"),
    )  # fmt: skip
