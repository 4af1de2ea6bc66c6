"""Per-layer sparsities (the allocation stage) stored and served, and a search's exports listed
with what they measured: front rows written by the runner's own row builders, read back through
the API; rows and populations written before the column read as per-block candidates."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from seeding import CheckpointSeed, seed_front_search
from sqlalchemy import select

from optishear.core.genome import Genome
from optishear.recipe.candidates import Candidate, Evaluation, Scored, ScoredCandidate, block_means
from service import db
from service.runner.rows import population_json
from service.tables import CandidateRow, JobStatus

# Two Llama-style blocks of seven linears (q, k, v, o, gate, up, down) and their sizes.
NUMEL = [16, 8, 8, 16, 32, 32, 32] * 2
BLOCK = [0] * 7 + [1] * 7


def scored(genome: int, layers: Sequence[float] | None, error: float, blocks=(0.5, 0.5)) -> Scored:
    """A front member: per-layer when `layers` is given (its blocks are their means)."""
    if layers is not None:
        blocks = block_means(layers, NUMEL, BLOCK)
    sparsity = sum(r * n for r, n in zip(layers or [], NUMEL, strict=False)) / sum(NUMEL)
    candidate = Candidate(Genome.from_index(genome), tuple(blocks), tuple(layers or ()))
    return Scored(candidate, Evaluation(error, sparsity if layers else 0.5, 4, 0.1), gap=0.0)


FRONT = [
    scored(3, [0.4, 0.4, 0.3, 0.4, 0.45, 0.45, 0.5] * 2, 0.12),
    scored(7, [0.5, 0.6, 0.5, 0.5, 0.55, 0.6, 0.6] * 2, 0.2),
    scored(9, [0.7, 0.7, 0.6, 0.7, 0.65, 0.65, 0.7] * 2, 0.45),
    scored(0, None, 0.3),  # a per-block member: no per-layer plan
]


def seed_search(
    settings: Any,
    front: Sequence[Scored] = FRONT,
    population: list[dict[str, Any]] | None = None,
    checkpoints: Sequence[CheckpointSeed] = (),
) -> tuple[uuid.UUID, list[CandidateRow]]:
    return seed_front_search(settings, front, population=population, checkpoints=checkpoints)


def test_layer_sparsity_round_trip_through_the_runner_rows_and_the_api(client, settings) -> None:
    sid, _ = seed_search(settings)
    front = client.get(f"/api/searches/{sid}/front").json()
    got = {c["key"]: c for c in front["candidates"]}
    assert len(got) == len(FRONT)
    for s in FRONT:
        record = s.record()
        c = got[record.key]
        assert c["layer_sparsity"] == record.layer_sparsity  # [] for the per-block member
        assert c["block_sparsity"] == record.block_sparsity
        assert c["sparsity"] == record.sparsity
    assert len({c["sparsity"] for c in front["candidates"]}) == len(FRONT)  # a front across
    assert got[FRONT[0].candidate.label()]["recommended"]
    # The library reads the served record back into the same candidate (the export does this).
    for c in front["candidates"]:
        again = ScoredCandidate.model_validate(c).candidate()
        assert again.label() == c["key"]
    g1 = client.get(f"/api/searches/{sid}/front", params={"generation": 1}).json()
    assert [c["layer_sparsity"] for c in g1["candidates"]] == [
        s.record().layer_sparsity for s in FRONT
    ]
    pop = client.get(f"/api/searches/{sid}/candidates").json()["candidates"]
    assert {m["key"]: m["layer_sparsity"] for m in pop} == {
        s.record().key: s.record().layer_sparsity for s in FRONT
    }
    # A per-block member stores SQL NULL, not a JSON null or an empty list.
    engine = db.make_engine(settings.resolved_database_url())
    try:
        with engine.connect() as conn:
            stored = dict(
                conn.execute(
                    select(CandidateRow.key, CandidateRow.layer_sparsity.is_(None)).where(
                        CandidateRow.search_id == sid, CandidateRow.generation.is_(None)
                    )
                ).all()
            )
    finally:
        engine.dispose()
    assert stored == {s.candidate.label(): not s.candidate.layer_sparsity for s in FRONT}


def test_populations_stored_before_layer_sparsity_read_as_per_block(client, settings) -> None:
    old = population_json(FRONT[3:], FRONT[3:])
    for member in old:
        del member["layer_sparsity"]  # as the previous release wrote them
    sid, _ = seed_search(settings, front=FRONT[3:], population=old)
    [member] = client.get(f"/api/searches/{sid}/candidates").json()["candidates"]
    assert member["layer_sparsity"] == []
    assert member["on_front"] is True


def test_a_search_lists_its_exports_with_their_measurements(client, settings) -> None:
    sid, rows = seed_search(
        settings,
        checkpoints=[
            (0, JobStatus.FAILED, None, None),
            (0, JobStatus.SUCCEEDED, 31.5, 0.4125),
            (2, JobStatus.SUCCEEDED, 88.25, 0.6375),
            (1, JobStatus.QUEUED, None, None),
        ],
    )
    r = client.get(f"/api/searches/{sid}/checkpoints")
    assert r.status_code == 200, r.text
    listed = r.json()
    assert [(c["candidate_key"], c["status"], c["perplexity"], c["sparsity"]) for c in listed] == [
        (rows[0].key, "failed", None, None),
        (rows[0].key, "succeeded", 31.5, 0.4125),
        (rows[2].key, "succeeded", 88.25, 0.6375),
        (rows[1].key, "queued", None, None),
    ]
    assert [c["candidate_id"] for c in listed] == [str(rows[i].id) for i in (0, 0, 2, 1)]
    assert all(c["search_id"] == str(sid) for c in listed)
    assert listed[1]["download_url"] == f"/api/checkpoints/{listed[1]['id']}/download"
    assert listed[3]["download_url"] is None
    # The single read and the submit give the same shape, key included.
    one = client.get(f"/api/checkpoints/{listed[2]['id']}").json()
    assert one == listed[2]
    again = client.post(f"/api/searches/{sid}/checkpoints", json={"candidate_id": str(rows[1].id)})
    assert again.status_code == 200  # the queued export of that candidate
    assert again.json() == listed[3]
    # Another search's exports are not listed; a search without any lists none.
    other, _ = seed_search(settings)
    assert client.get(f"/api/searches/{other}/checkpoints").json() == []
