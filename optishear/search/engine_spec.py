"""How a search config becomes a FitnessEngine: on a loaded model (engine_for), or from a small,
picklable recipe with which a remote actor builds its own (EngineSpec)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from optishear.config import SearchConfig
from optishear.core.errors import ModelSourceError
from optishear.core.files import user_path
from optishear.core.settings import LibrarySettings
from optishear.data.text import sample_calibration, sample_validation
from optishear.model.hf import load_model, torch_device, torch_dtype
from optishear.model.streaming import Execution, place_model
from optishear.search.database import DatabaseRequest
from optishear.search.fitness import FitnessEngine

logger = logging.getLogger(__name__)


def database_request(config: SearchConfig, folder: Path | None = None) -> DatabaseRequest | None:
    """The layer database an allocation search asks for (None for other stages, or off)."""
    a = config.allocation
    if "allocation" not in config.stage_list() or a.database == "off":
        return None
    return DatabaseRequest(
        config.genome,
        config.allocation_levels(),
        refit=a.refit,
        masks=a.masks,
        storage=a.database,
        memory_bytes=int(a.memory_gib * 2**30),
        folder=folder,
    )


def engine_for(
    model: nn.Module,
    calib_ids: Tensor,
    config: SearchConfig,
    *,
    folder: Path | None = None,
    valid_ids: Tensor | None = None,
) -> FitnessEngine:
    """The fitness engine a search config asks for, on a loaded model, its calibration and
    validation sequences (optishear.data.text.sample_validation; None: none held aside).

    `folder` is where a layer database too big for memory goes (the search's folder).
    """
    return FitnessEngine(
        model,
        calib_ids,
        config.pattern,
        batch_size=config.batch_size,
        fitness_samples=config.fitness_samples,
        objective=config.objective,
        stats=config.engine_stats,
        sparsity=config.target,
        database=database_request(config, folder),
        second_order=config.needs_hessians(),
        valid_ids=valid_ids,
        prefix_cache_bytes=int(config.prefix_memory_gib * 2**30),
    )


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """Everything needed to build a FitnessEngine from the local model cache or a folder.

    A spec holds plain values only (the search config and a device name: no tensors, no
    model), so it is cheap to send to an actor on another machine, which loads the model
    itself. A model path that exists here is made absolute, so that an actor with another
    working directory finds the same folder.
    """

    config: SearchConfig
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ... or "auto"
    execution: Execution = "auto"  # resident or block streaming (optishear.model.streaming)
    folder: str | None = None  # where a layer database too big for memory goes

    def __post_init__(self) -> None:
        path = user_path(self.config.model, ModelSourceError)
        if path.exists() and not path.is_absolute():
            config = self.config.model_copy(update={"model": str(path.resolve())})
            object.__setattr__(self, "config", config)

    def build(
        self,
        calib_ids: Tensor | None = None,
        settings: LibrarySettings | None = None,
        valid_ids: Tensor | None = None,
    ) -> FitnessEngine:
        """Load the model and build its engine.

        `calib_ids` and `valid_ids` are the calibration and validation token ids when the
        caller sampled them already (they must come from the config's calibration); without
        them they are sampled here, with the same seeded samplers, so every builder gets the
        same ids.
        """
        settings = settings or LibrarySettings()
        device = torch_device(self.device)
        model, tokenizer, _ = load_model(
            self.config.model,
            settings=settings,
            device="cpu",
            dtype=torch_dtype(self.config.dtype, device),
        )
        execution, _ = place_model(model, device, self.execution)
        logger.info("%s", execution.describe())  # in the actor's log
        if calib_ids is None:
            calib_ids = sample_calibration(tokenizer, self.config.calibration, settings)
        if valid_ids is None:
            valid_ids = search_validation(tokenizer, self.config, settings)
        folder = Path(self.folder) if self.folder is not None else None
        return engine_for(model, calib_ids, self.config, folder=folder, valid_ids=valid_ids)


def search_validation(
    tokenizer: PreTrainedTokenizerBase, config: SearchConfig, settings: LibrarySettings | None
) -> Tensor | None:
    """The validation sequences that score a search's candidates: as many as a full
    evaluation uses, from the share of the calibration text held aside."""
    return sample_validation(tokenizer, config.calibration, config.full_samples(), settings)
