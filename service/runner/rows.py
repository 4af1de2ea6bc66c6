"""Scored candidates as the runner stores them: front rows and a generation's population."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from optishear.recipe.candidates import Scored
from service.tables import CandidateRow


def candidate_rows(
    search_id: uuid.UUID, generation: int | None, front: Sequence[Scored], recommended: str | None
) -> list[CandidateRow]:
    rows = []
    for rank, s in enumerate(front):
        r = s.record()
        rows.append(
            CandidateRow(
                id=uuid.uuid4(),
                search_id=search_id,
                generation=generation,
                key=r.key,
                rank=rank,
                genome=r.genome.model_dump(mode="json"),
                block_sparsity=r.block_sparsity,
                layer_sparsity=r.layer_sparsity or None,
                error=r.objectives.error,
                sparsity=r.sparsity,
                gap=r.objectives.gap,
                meets_target=r.meets_target,
                n_samples=r.n_samples,
                recommended=r.key == recommended,
            )
        )
    return rows


def population_json(population: Sequence[Scored], front: Sequence[Scored]) -> list[dict[str, Any]]:
    """The generation's population as stored with it; `on_front` marks its front members."""
    on_front = {s.candidate.label() for s in front}
    return [
        {**s.record().model_dump(mode="json"), "on_front": s.candidate.label() in on_front}
        for s in population
    ]
