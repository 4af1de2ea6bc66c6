"""Genomes that transfer: a succeeded search's best genomes stored, listed by family, pattern
and target, and reused by a new search as seeds or as its fixed metric (API and CLI)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

import pytest
from seeding import seed_front_search
from sqlalchemy import delete, select

from optishear.cli import main
from optishear.core.genome import Genome
from optishear.core.settings import LibrarySettings
from optishear.model.sources import model_family
from optishear.recipe.candidates import Candidate, Evaluation, Scored, SearchSummary
from service import db
from service.commands.run import _submit
from service.genomes import MAX_GENOMES, best_genomes
from service.schemas import SearchCreate
from service.settings import get_settings
from service.tables import Search, SearchGenome


def scored(genome: int, error: float) -> Scored:
    candidate = Candidate(Genome.from_index(genome), (0.5, 0.5))
    return Scored(candidate, Evaluation(error, 0.5, 4, 0.1), gap=0.0)


# Genome 7 is row-canonical to 0 (a row-constant alpha): the same masks, kept once.
FRONT = [scored(2, 0.30), scored(100, 0.10), scored(0, 0.20), scored(7, 0.05), scored(3, 0.40)]
BEST = Genome.from_index(100)  # the recommended one (index 1 of FRONT)


def seed_source(settings, *, family="llama", front: Sequence[Scored] = FRONT, **request):
    """A succeeded metric search with FRONT (genome 100 recommended) and its stored genomes."""
    db.upgrade(settings.resolved_database_url())  # as the app or a runner would have
    spec = SearchCreate(model="m", stages="metric", generations=1, **request)
    sid, _ = seed_front_search(settings, front, recommended=1, request=spec, family=family)
    return str(sid)


def test_best_genomes_rank_the_recommendation_then_finalists_then_the_front() -> None:
    listed = [s.record() for s in FRONT]
    shipped = [scored(3, 0.5).record(), scored(100, 0.6).record(), scored(2, 0.7).record()]
    summary = SearchSummary(
        recommended_key=shipped[0].key,
        evaluations=1,
        cache_hits=0,
        search_seconds=1.0,
        rescored=shipped,
    )
    got = [(c.genome.index, origin) for c, origin in best_genomes(summary, listed)]
    # 7 and 0 share a row-canonical class: only the better (7, on the front at 0.05) stays
    assert got == [(3, "recommended"), (100, "finalist"), (2, "finalist"), (7, "front")]
    plain = SearchSummary(
        recommended_key=listed[1].key, evaluations=1, cache_hits=0, search_seconds=1.0
    )
    got = [(c.genome.index, origin) for c, origin in best_genomes(plain, listed)]
    assert got == [(100, "recommended"), (7, "front"), (2, "front"), (3, "front")]
    many = [scored(i * 49, 0.01 * i).record() for i in range(1, 20)]  # distinct classes
    summary = SearchSummary(
        recommended_key=many[0].key, evaluations=1, cache_hits=0, search_seconds=1.0
    )
    assert len(best_genomes(summary, many)) == MAX_GENOMES


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # one run is enough
def test_the_runner_stores_a_finished_searchs_genomes_and_they_seed_the_next(
    client, search_body, thread_runner, poll
) -> None:
    cheap = {"generations": 1, "screen": {"rungs": "off"}}  # NSGA-III alone, one generation
    sid = client.post("/api/searches", json=search_body(**cheap)).json()["id"]
    with thread_runner():
        done = poll(client, f"/api/searches/{sid}")
    assert done["status"] == "succeeded", done
    front = client.get(f"/api/searches/{sid}/front").json()
    rec = next(c for c in front["candidates"] if c["recommended"])

    listed = client.get("/api/genomes", params={"family": "llama"}).json()
    mine = [g for g in listed["items"] if g["search_id"] == sid]
    assert mine, listed
    assert [g["rank"] for g in mine] == list(range(len(mine)))
    assert len(mine) <= MAX_GENOMES
    first = mine[0]
    assert first["origin"] == "recommended"
    assert first["genome"]["index"] == rec["genome"]["index"]
    assert first["genome"]["formula"] == rec["genome"]["formula"]
    assert first["error"] == rec["objectives"]["error"]
    assert (first["family"], first["pattern"], first["target"]) == ("llama", "unstructured", 0.5)
    assert Genome.parse(first["genome"]["spec"]).index == first["genome"]["index"]
    classes = {Genome.from_index(g["genome"]["index"]).row_canonical().index for g in mine}
    assert len(classes) == len(mine)  # distinct

    r = client.post("/api/searches", json=search_body(metric_from={"search": sid, "use": "seed"}))
    assert r.status_code == 201, r.text
    seeds = r.json()["request"]["seed_genomes"]
    assert seeds == [g["genome"]["spec"] for g in mine]


def test_model_family_reads_config_json_without_loading_weights(tiny_model_dir, tmp_path) -> None:
    library = LibrarySettings(cache=tmp_path / "cache")
    assert model_family(str(tiny_model_dir / "model"), library) == "llama"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert model_family(str(gguf), library) == "unknown"
    assert model_family("nobody/no-such-model-here", library) == "unknown"  # cache only
    assert model_family("/no/such/folder", library) == "unknown"
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    assert model_family(str(bare), library) == "unknown"
    (bare / "config.json").write_text("{not json")
    assert model_family(str(bare), library) == "unknown"
    (bare / "config.json").write_text(json.dumps({"model_type": "Qwen2"}))
    assert model_family(str(bare), library) == "qwen2"


def test_genomes_are_listed_best_first_per_search_with_filters(client, settings) -> None:
    a = seed_source(settings)
    b = seed_source(settings, family="qwen2", pattern="2:4")
    c = seed_source(settings, sparsity=0.6)

    def listed(**params):
        r = client.get("/api/genomes", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    everything = listed()
    assert everything["total"] == 12  # 4 distinct classes of FRONT, per search
    assert [g["search_id"] for g in everything["items"]] == [c] * 4 + [b] * 4 + [a] * 4
    assert [g["rank"] for g in everything["items"][:4]] == [0, 1, 2, 3]
    top = everything["items"][8]
    assert top["genome"] == {"index": 100, "spec": BEST.spec(), "formula": BEST.formula()}
    assert top["origin"] == "recommended"
    assert top["error"] == 0.10
    assert [g["genome"]["index"] for g in everything["items"][8:]] == [100, 7, 2, 3]

    assert {g["search_id"] for g in listed(family="llama")["items"]} == {a, c}
    assert {g["search_id"] for g in listed(family="LLAMA")["items"]} == {a, c}
    assert {g["search_id"] for g in listed(pattern="2:4")["items"]} == {b}
    assert {g["search_id"] for g in listed(pattern=" 2 : 4 ")["items"]} == {b}
    assert {g["search_id"] for g in listed(target=0.6)["items"]} == {c}
    assert {g["search_id"] for g in listed(family="llama", pattern="unstructured", target=0.5)[
        "items"
    ]} == {a}  # fmt: skip
    assert listed(family="mistral") == {"items": [], "total": 0, "limit": 100, "offset": 0}
    page = listed(limit=3, offset=2)
    assert (page["total"], len(page["items"]), page["items"][0]["rank"]) == (12, 3, 2)

    for bad in ({"pattern": "3:2"}, {"pattern": "diagonal"}, {"family": "a b"}, {"target": 1.5}):
        r = client.get("/api/genomes", params=bad)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"]


def test_a_stored_genome_seeds_a_new_search_through_the_api(client, settings, search_body) -> None:
    source = seed_source(settings)
    own = "f1=sqrt,f2=identity,alpha=one,beta=one"
    r = client.post(
        "/api/searches",
        json=search_body(metric_from={"search": source}, seed_genomes=[own, BEST.spec()]),
    )
    assert r.status_code == 201, r.text
    stored = [BEST.spec(), *(Genome.from_index(i).spec() for i in (7, 2, 3))]
    request = r.json()["request"]
    assert request["seed_genomes"] == [*stored, own]  # the source's first, no duplicates
    assert request["metric_from"] == {"search": source, "use": "seed"}
    assert request["stages"] == "metric"
    assert client.get(f"/api/searches/{r.json()['id']}").json()["request"] == request
    # the stored request is a plain config: resubmitted, it expands to itself
    again = client.post("/api/searches", json=request)
    assert again.status_code == 201, again.text
    assert again.json()["request"] == request


def test_a_stored_genome_fixes_the_metric_of_a_layerwise_search(
    client, settings, search_body
) -> None:
    source = seed_source(settings)
    r = client.post(
        "/api/searches", json=search_body(metric_from={"search": source, "use": "fixed"})
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["request"]["genome"] == BEST.spec()
    assert body["request"]["stages"] == "layerwise"
    assert body["request"]["metric_from"] == {"search": source, "use": "fixed"}
    assert body["progress"]["total_generations"] == 2  # one stage, no screen


def test_metric_from_errors_are_4xx_with_messages(client, settings, search_body) -> None:
    source = seed_source(settings)
    queued = client.post("/api/searches", json=search_body()).json()["id"]
    cases = [
        ({"search": str(uuid.uuid4())}, {}, 422, "no search"),
        ({"search": "not-a-uuid"}, {}, 422, "metric_from.search"),
        ({"search": source, "use": "copy"}, {}, 422, "metric_from.use"),
        ({"search": queued}, {}, 409, "is queued"),
        ({"search": queued, "use": "fixed"}, {}, 409, "only a succeeded search"),
        (
            {"search": source, "use": "fixed"},
            {"pattern": "2:4"},
            422,
            f"optishear prune --method meta --genome '{BEST.spec()}'",
        ),
        ({"search": source}, {"stages": "layerwise"}, 422, "search no metric"),
    ]
    for metric_from, extra, code, fragment in cases:
        r = client.post("/api/searches", json=search_body(metric_from=metric_from, **extra))
        assert r.status_code == code, (metric_from, extra, r.text)
        assert fragment in r.json()["detail"], r.json()


@pytest.fixture
def run_env(monkeypatch, database_url, tmp_path):
    monkeypatch.setenv("OPTISHEAR_DATABASE_URL", database_url)
    monkeypatch.setenv("OPTISHEAR_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


def test_optishear_run_metric_from_a_bad_id_is_one_line_and_exit_2(
    run_env, settings, capsys
) -> None:
    source = seed_source(settings)
    engine = db.make_engine(run_env)
    try:
        queued, _, _ = _submit(db.make_sessions(engine, write=True), SearchCreate(model="m"))
    finally:
        engine.dispose()
    cases = [
        (["--metric-from", str(uuid.uuid4())], "no search"),
        (["--metric-from", "nope"], "metric_from.search: Input should be a valid UUID"),
        (["--metric-from", str(queued)], "is queued"),
        (["--metric-from", source, "--metric-use", "fixed", "--pattern", "2:4"], "--genome"),
        (["--metric-use", "fixed"], "--metric-use needs --metric-from"),
    ]
    for argv, message in cases:
        assert main(["run", "--model", "smollm2-135m", *argv]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("optishear: error: "), captured.err
        assert message in captured.err, captured.err
        assert captured.err.count("\n") == 1
        assert captured.out == ""


def test_optishear_run_expands_metric_from_as_the_api_does_and_deletes_cascade(settings) -> None:
    source = seed_source(settings)
    engine = db.make_engine(settings.resolved_database_url())
    try:
        sessions = db.make_sessions(engine, write=True)
        fixed = SearchCreate(model="m", metric_from={"search": source, "use": "fixed"})
        sid, spec, _ = _submit(sessions, fixed)
        assert (spec.genome, spec.stages) == (BEST, "layerwise")
        seeded = SearchCreate(model="m", metric_from={"search": source})
        sid2, spec2, _ = _submit(sessions, seeded)
        assert spec2.seed_genomes[0] == BEST
        with sessions() as session:
            assert session.get_one(Search, sid).request["genome"] == BEST.spec()
            assert session.get_one(Search, sid2).request["seed_genomes"][0] == BEST.spec()
            # the source's genomes stay, the new (queued) searches have none yet
            owners = set(session.scalars(select(SearchGenome.search_id)).all())
            assert owners == {uuid.UUID(source)}
        with sessions.begin() as session:  # a deleted search takes its genomes with it
            session.execute(delete(Search).where(Search.id == uuid.UUID(source)))
        with sessions() as session:
            assert session.scalars(select(SearchGenome)).all() == []
    finally:
        engine.dispose()
