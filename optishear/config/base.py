"""The pieces every config shares: field types, the frozen base model, the target rule, and how
a validation error reads."""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from optishear.config.fields import PatternField
from optishear.core.errors import ConfigError
from optishear.core.patterns import Pattern, check_target

BUNDLED = "wiki"  # the bundled Wikipedia sample (calibration split / evaluation split)

# No NUL characters: Postgres text and file paths both reject them.
Text = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\x00]+$")]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
# optishear.methods.registry builds each
Method = Literal["magnitude", "wanda", "ria", "sparsegpt", "meta"]
METHODS: tuple[str, ...] = typing.get_args(Method)
Stages = Literal["metric", "layerwise", "both", "joint", "allocation"]
Objective = Literal["kl", "logits_fro"]
# auto: bfloat16 where the device computes it natively, else float32 (optishear.model.hf)
Dtype = Literal["float32", "bfloat16", "float16", "auto"]
DTYPES: tuple[str, ...] = typing.get_args(Dtype)


def flag(name: str, **extra: Any) -> dict[str, Any]:
    return {"flag": name, **extra}


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


def default_sparsity(pattern: Pattern) -> float:
    """The target when none is given: N/M for an N:M pattern, else half the weights."""
    return pattern.sparsity if pattern.structured else 0.5


class TargetConfig(ConfigModel):
    """A target sparsity and pattern; the one place where the default target is chosen."""

    sparsity: float | None = Field(
        None, gt=0, lt=1, description="target (parameter-weighted mean) share of pruned weights"
    )
    pattern: PatternField = Field(Pattern(), description="unstructured, 2:4, 4:8, ...")

    def _fill_target(
        self, fallback: float | None = None, *, dense_exceptions: bool = False
    ) -> None:
        if self.sparsity is None:  # frozen: written once, before anyone can read it
            value = default_sparsity(self.pattern) if fallback is None else fallback
            object.__setattr__(self, "sparsity", value)
        assert self.sparsity is not None
        check_target(self.sparsity, self.pattern, dense_exceptions=dense_exceptions)

    @property
    def target(self) -> float:
        """The resolved sparsity (never None once validated)."""
        assert self.sparsity is not None
        return self.sparsity


def config_error(exc: Exception) -> ConfigError:
    """A pydantic ValidationError as one ConfigError line, 'field: message; ...'."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return ConfigError(str(exc))
    return ConfigError(validation_message(errors()))


def validation_message(errors: Any) -> str:
    """pydantic's errors as one line, 'field: message; ...' (the API's 422 detail, the CLI's)."""
    parts = []
    for err in list(errors)[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request"
