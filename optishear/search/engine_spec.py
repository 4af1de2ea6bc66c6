"""A small, picklable recipe for a FitnessEngine, so that a remote worker can build its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from optishear.data import CalibrationConfig, sample_calibration
from optishear.errors import ConfigError
from optishear.masks import Pattern
from optishear.models import load_model
from optishear.search.fitness import FitnessEngine, Objective
from optishear.settings import LibrarySettings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """Everything needed to build a FitnessEngine from the local model cache or a folder.

    A spec holds plain values only (no tensors, no model), so it is cheap to send to a worker
    process or another machine; each worker loads the model itself. `model` is what
    `load_model` accepts; a path that exists here is made absolute, so that a worker with
    another working directory finds the same folder.
    """

    model: str
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    pattern: str = "unstructured"
    batch_size: int = 8
    fitness_samples: int | None = None
    objective: Objective = "kl"
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ... or "auto"
    dtype: str = "float32"
    # Score masks with the statistics of Wanda's pruned model at this target (None: dense).
    stats_target: float | None = None

    def __post_init__(self) -> None:
        Pattern.parse(self.pattern)  # fails early, on the driver, with a readable message
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.fitness_samples is not None and self.fitness_samples < 1:
            raise ConfigError(f"fitness samples must be >= 1, got {self.fitness_samples}")
        if self.objective not in ("kl", "logits_fro"):
            raise ConfigError(f"objective must be 'kl' or 'logits_fro', got {self.objective!r}")
        path = Path(self.model).expanduser()
        if path.exists() and not path.is_absolute():
            object.__setattr__(self, "model", str(path.resolve()))

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def build(
        self, calib_ids: Tensor | None = None, settings: LibrarySettings | None = None
    ) -> FitnessEngine:
        """Load the model and build its engine.

        `calib_ids` are the calibration token ids when the caller sampled them already (they
        must come from `self.calibration`); without them the calibration is sampled here,
        with the same seeded sampler, so every builder gets the same ids.
        """
        settings = settings or LibrarySettings()
        model, tokenizer, _ = load_model(
            self.model, settings=settings, device=self.torch_device(), dtype=DTYPES[self.dtype]
        )
        if calib_ids is None:
            calib_ids = sample_calibration(tokenizer, self.calibration, settings)
        return FitnessEngine(
            model,
            calib_ids,
            Pattern.parse(self.pattern),
            batch_size=self.batch_size,
            fitness_samples=self.fitness_samples,
            objective=self.objective,
            stats_target=self.stats_target,
        )
