"""The dashboard in a real headless Chromium against the real API, runner and a tiny model."""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path

import httpx
import pytest
from seeding import seed_front_search

from optishear.core.genome import Genome
from optishear.recipe.candidates import Candidate, Evaluation, Scored, block_means
from service.tables import JobStatus

pytestmark = pytest.mark.browser

# `expect` and `page` come from conftest.py: without Chromium these tests skip, or fail under CI.

TASKS = Path(__file__).resolve().parents[1] / "data" / "lm_eval_tasks"
UUID = r"[0-9a-f-]{36}"


def _fill_tiny_search(page, tiny: Path, **fields: str) -> None:
    values = {
        "model": str(tiny / "model"),
        "population": "4",
        "generations": "2",
        "seed": "0",
        "calibration.source": str(tiny / "calib.txt"),
        "calibration.n_samples": "4",
        "calibration.seq_len": "16",
        "evaluation.text": str(tiny / "eval.txt"),
        "evaluation.seq_len": "32",
        "evaluation.windows": "4",
        "screen.rungs": "1x8",  # the screen's one rung over the first-order classes
        **fields,
    }
    page.locator("details.more > summary").click()
    page.select_option("select[name=stages]", "metric")
    page.select_option("select[name=metric_space]", "first_order")
    for name, value in values.items():
        page.fill(f'#search-form [name="{name}"]', value)


# The same path with API keys on: every call carries X-API-Key, the download goes through fetch.
@pytest.mark.parametrize("key", [None, "s3cret"], ids=["open", "api-key"])
def test_submit_watch_front_export_download(
    make_service, page, expect, artifacts, tiny_model_dir, tmp_path, request, key
) -> None:
    server = make_service(runner=False, api_keys=key or (), task_path=TASKS, measure_device="cpu")
    headers = {"X-API-Key": key} if key else {}
    api = httpx.Client(base_url=server.url, timeout=30, headers=headers)
    request.addfinalizer(api.close)
    page.goto(server.url)
    if key:
        expect(page.locator("#auth")).to_be_visible()
        page.fill("#auth-key", key)
        page.click("#auth-form button")
    expect(page.locator("#conn")).to_have_text("connected")
    expect(page.locator("#search-list")).to_contain_text("No searches yet")

    # A 4xx from the API is shown as the API wrote it, and the field is marked.
    _fill_tiny_search(page, tiny_model_dir, population="2")
    page.click("#submit")
    bad = api.post(
        "/api/searches",
        json={"model": str(tiny_model_dir / "model"), "population": 2, "stages": "metric"},
    )
    assert bad.status_code == 422
    expect(page.locator("#form-error")).to_contain_text(bad.json()["detail"])
    expect(page.locator('[name="population"]')).to_have_attribute("aria-invalid", "true")

    page.fill('[name="population"]', "4")
    page.click("#submit")
    expect(page).to_have_url(re.compile(rf"#/search/{UUID}$"))
    sid = page.url.rsplit("/", 1)[1]
    item = page.locator(f'#search-list li[data-id="{sid}"]')
    # No runner yet: the search waits as queued; then the page follows it on its own.
    expect(item).to_have_attribute("data-status", "queued")
    expect(page.locator("#d-head .badge")).to_have_text("queued")
    server.start_runner()
    expect(item).to_have_attribute("data-status", "succeeded", timeout=90_000)
    expect(page.locator("#d-head .badge")).to_have_text("succeeded")
    expect(page.locator("#d-gen")).to_have_text("generation 3 of 3")  # a rung, 2 generations

    # The charts show what the API holds: one point per generation, one per front candidate.
    search = api.get(f"/api/searches/{sid}").json()
    front = api.get(f"/api/searches/{sid}/front").json()
    gens = api.get(f"/api/searches/{sid}/generations").json()
    expect(page.locator("#progress-chart .gen-point")).to_have_count(len(gens))
    points = page.locator("#front-chart .point")
    expect(points).to_have_count(len(front["candidates"]))
    assert front["candidates"]
    rec = page.locator("#front-chart .point.recommended")
    expect(rec).to_have_count(1)
    assert rec.get_attribute("data-candidate") == search["result"]["recommended_id"]
    # Every candidate of the shown generation's population is plotted too (grey), not just
    # the front: with the exact-target repair the front alone is often a single point.
    population = api.get(f"/api/searches/{sid}/candidates").json()["candidates"]
    assert len(population) > 1
    pop_points = page.locator("#front-chart .pop-point")
    expect(pop_points).to_have_count(len(population))
    assert {pop_points.nth(i).get_attribute("data-key") for i in range(len(population))} == {
        c["key"] for c in population
    }
    expect(page.locator("#front-chart")).to_contain_text("per-block sparsity spread")
    expect(page.locator("#front-chart")).to_contain_text("reconstruction error")

    # Baseline markers: Wanda and OWL+Wanda at the same target, as the search evaluated them.
    assert [b["name"] for b in front["baselines"]] == ["Wanda", "OWL+Wanda"]
    for b in front["baselines"]:
        marker = page.locator(f'#front-chart .baseline[data-baseline="{b["name"]}"]')
        expect(marker).to_have_count(1)
        expect(marker).to_contain_text(b["name"])

    # The gain in held-out perplexity (the form asks for it by default), as the API reports it.
    held_out = search["result"]["held_out"]
    assert search["request"]["compare_baselines"] is True
    for name, gain in held_out["gains"].items():
        error = held_out["gain_errors"][name]  # the windows' standard error beside each gain
        expect(page.locator(f'#heldout .gain[data-baseline="{name}"]')).to_contain_text(
            f"{abs(gain) * 100:.1f}% ± {error * 100:.1f}%"
        )
    table = page.locator("#heldout-table")
    for row in held_out["rows"]:
        expect(table.locator(f'tr[data-model="{row["name"]}"]')).to_contain_text(
            f"{row['perplexity']:.4g}"
        )
    expect(page.locator("#heldout")).to_contain_text(
        f"{held_out['protocol']['eval_windows']} windows of {held_out['protocol']['eval_seq_len']}"
    )

    # Clicking a candidate shows its formula and one bar per block.
    chosen = front["candidates"][-1]
    page.locator(f'#front-chart .point[data-candidate="{chosen["id"]}"] circle').click()
    expect(page.locator("#formula")).to_have_text(chosen["genome"]["formula"])
    expect(page.locator("#block-chart .block-bar")).to_have_count(len(chosen["block_sparsity"]))

    # Export, watch it finish, download it, and check the bytes against the API's record.
    page.click("#export-button")
    download_link = page.locator("#download")
    expect(download_link).to_be_visible(timeout=60_000)
    href = download_link.get_attribute("href")
    cid = re.fullmatch(rf"/api/checkpoints/({UUID})/download", href).group(1)
    ck = api.get(f"/api/checkpoints/{cid}").json()
    assert ck["candidate_id"] == chosen["id"]
    assert ck["status"] == "succeeded"
    expect(page.locator("#export-sha")).to_have_text(f"sha256 {ck['sha256']}")
    with page.expect_download() as info:
        download_link.click()
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    data = saved.read_bytes()
    assert len(data) == ck["size_bytes"]
    assert hashlib.sha256(data).hexdigest() == ck["sha256"]

    # Measure the export from the page: the offline local lm-eval task, then speed.
    panel = page.locator(f'#measurements[data-checkpoint="{cid}"]')
    panel.locator("#tasks-input").fill("optishear_cloze")
    panel.locator("#tasks-limit").fill("6")
    panel.locator("#measure-tasks").click()
    panel.locator("#speed-prompt").fill("32")  # the tiny model has 128 positions
    panel.locator("#measure-speed").click()
    tasks = panel.locator('.measurement[data-kind="tasks"]')
    expect(tasks.locator(".badge")).to_have_text("succeeded", timeout=120_000)
    measured = api.get(f"/api/checkpoints/{cid}/measurements").json()
    acc = next(
        s for s in measured[0]["result"]["scores"] if s["task"] == "optishear_cloze"
        and s["metric"] == "acc"
    )  # fmt: skip
    row = tasks.locator('tr[data-task="optishear_cloze"][data-metric="acc"]')
    expect(row).to_contain_text(f"{acc['value']:.4g}")
    speed = panel.locator('.measurement[data-kind="speed"]')
    expect(speed.locator(".badge")).to_have_text("succeeded", timeout=120_000)
    expect(speed.locator("tr[data-variant=pruned]")).to_have_count(2)  # batch sizes 1 and 8
    expect(speed.locator(".kernel-note")).to_contain_text("no sparse kernel")

    page.screenshot(
        path=artifacts / f"dashboard-finished-search-{request.node.callspec.id}.png", full_page=True
    )


def test_failed_search_shows_its_error(
    make_service, page, expect, tiny_model_dir, tmp_path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # passes the API's check, fails to load
    server = make_service()
    page.goto(server.url)
    _fill_tiny_search(page, tiny_model_dir, model=str(broken))
    page.click("#submit")
    expect(page.locator("#d-head .badge")).to_have_text("failed", timeout=60_000)
    expect(page.locator("#d-head .failure")).to_contain_text("cannot load model")
    expect(page.locator("#search-list li .error")).to_contain_text("cannot load model")


def test_api_key_prompt_and_unreachable_api(make_service, page, expect) -> None:
    server = make_service(runner=False, api_keys="right-key")
    page.goto(server.url)
    expect(page.locator("#auth")).to_be_visible()
    expect(page.locator("#auth-message")).to_contain_text("a valid API key is required")

    page.fill("#auth-key", "wrong-key")
    page.click("#auth-form button")
    expect(page.locator("#auth-message")).to_contain_text("refused this key")

    page.fill("#auth-key", "right-key")
    page.click("#auth-form button")
    expect(page.locator("#auth")).to_be_hidden()
    expect(page.locator("#search-list")).to_contain_text("No searches yet")
    assert page.evaluate("sessionStorage.getItem('optishear.apiKey')") == "right-key"
    page.reload()  # the key lasts for the browser session
    expect(page.locator("#conn")).to_have_text("connected")
    expect(page.locator("#auth")).to_be_hidden()

    # The page says so when the API goes away, instead of going blank.
    server.stop()
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    expect(page.locator("#banner")).to_contain_text("Cannot reach the API")
    expect(page.locator("#conn")).to_have_text("offline")


def _seed_front_search(settings) -> tuple[str, list]:
    """A succeeded search with a front across sparsities (per-layer plans), stored by the
    runner's own row builders, and one measured export of its sparsest member; no runner needed.
    Returns the search id and the front's rows, in order of sparsity."""
    numel = [16, 8, 8, 16, 32, 32, 32] * 2  # two Llama-style blocks of seven linears
    blocks = [0] * 7 + [1] * 7
    front = []
    for genome, base, error in ((3, 0.4, 0.1), (7, 0.5, 0.2), (9, 0.6, 0.4), (12, 0.7, 0.9)):
        layers = [min(0.9, base + d) for d in (0.0, 0.05, -0.05, 0.0, 0.05, 0.0, 0.0)] * 2
        layers[2] = 0.0  # one dense layer
        sparsity = sum(r * n for r, n in zip(layers, numel, strict=True)) / sum(numel)
        cand = Candidate(
            Genome.from_index(genome), block_means(layers, numel, blocks), tuple(layers)
        )
        front.append(Scored(cand, Evaluation(error, sparsity, 4, 0.1), gap=0.0))
    sid, rows = seed_front_search(
        settings,
        front,
        recommended=1,
        checkpoints=[(3, JobStatus.SUCCEEDED, 123.5, front[3].evaluation.sparsity)],
        fallback=FALLBACK,
    )
    return str(sid), rows


FALLBACK = "no searched candidate beat SparseGPT as shipped on validation"


def test_front_across_sparsities_chart_layers_and_export(make_service, page, expect) -> None:
    server = make_service(runner=False)  # nothing runs: the export stays queued
    sid, rows = _seed_front_search(server.settings)
    page.goto(f"{server.url}/#/search/{sid}")
    expect(page.locator("#d-head .badge")).to_have_text("succeeded")
    expect(page.locator("#d-fallback")).to_contain_text(FALLBACK)  # a baseline was shipped

    # Error against achieved sparsity: one point per front member, placed by its sparsity.
    chart = page.locator("#sparsity-chart")
    points = chart.locator(".point")
    expect(points).to_have_count(len(rows))
    expect(chart).to_contain_text("achieved sparsity")
    expect(chart).to_contain_text("reconstruction error")
    xs = {
        uuid.UUID(points.nth(i).get_attribute("data-candidate")): float(
            points.nth(i).locator("circle").get_attribute("cx")
        )
        for i in range(len(rows))
    }
    by_id = {r.id: r for r in rows}
    assert set(xs) == set(by_id)
    assert sorted(xs, key=xs.__getitem__) == sorted(by_id, key=lambda k: by_id[k].sparsity)
    expect(chart.locator(".front-line")).to_have_count(1)
    # The measured export: its held-out perplexity on the right axis, at its measured sparsity.
    exported = chart.locator(".export-point")
    expect(exported).to_have_count(1)
    assert exported.get_attribute("data-candidate") == str(rows[3].id)
    expect(chart.locator(".right-axis")).to_contain_text("held-out perplexity")
    expect(page.locator("#exports-table tbody tr")).to_have_count(1)
    expect(page.locator("#exports-table")).to_contain_text(rows[3].key)
    expect(page.locator("#exports-table")).to_contain_text("123.5")

    # Choosing a point shows its per-layer sparsities (one row per block) and exports it.
    chosen = rows[0]
    chart.locator(f'.point[data-candidate="{chosen.id}"] circle').click()
    expect(page.locator("#d-candidate")).to_contain_text(chosen.key)
    table = page.locator("#layer-table")
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table.locator("td.layer-cell")).to_have_count(len(chosen.layer_sparsity))
    expect(table.locator("thead")).to_contain_text("gate")
    expect(table.locator('td[data-block="0"][data-layer="2"]')).to_have_text("dense")
    page.click("#export-button")
    expect(page.locator("#export-status")).to_contain_text("Export queued")
    expect(page.locator("#exports-table tbody tr")).to_have_count(2)

    # Choosing the exported point shows its measurements (the search's list of exports).
    exported.click()
    expect(page.locator("#d-candidate")).to_contain_text(rows[3].key)
    expect(page.locator("#export")).to_contain_text("123.5")
    expect(page.locator("#download")).to_be_visible()


def test_form_sends_the_allocation_settings(make_service, page, expect, tiny_model_dir) -> None:
    server = make_service(runner=False)
    page.goto(server.url)
    expect(page.locator("#conn")).to_have_text("connected")
    _fill_tiny_search(page, tiny_model_dir, low_fidelity_samples="2, 4", max_evaluations="40")
    page.select_option("select[name=stages]", "allocation")
    expect(page.locator("#allocation-settings")).to_have_attribute("open", "")
    page.select_option('select[name="allocation.granularity"]', "part")
    page.select_option('select[name="allocation.selection"]', "nsga3")
    page.select_option('select[name="allocation.database"]', "memory")
    page.check('input[name="allocation.refit"]')
    page.fill("#front-low", "0.4")
    page.fill("#front-high", "0.7")
    page.fill('[name="allocation.levels"]', "3")
    page.fill('[name="allocation.step"]', "0.1")
    page.click("#submit")
    expect(page).to_have_url(re.compile(rf"#/search/{UUID}$"))
    sid = page.url.rsplit("/", 1)[1]
    request = httpx.get(f"{server.url}/api/searches/{sid}", timeout=30).json()["request"]
    assert request["stages"] == "allocation"
    assert request["low_fidelity_samples"] == [2, 4]
    assert request["max_evaluations"] == 40
    assert request["sparsity"] == 0.55  # the front's middle
    assert request["allocation"] == {
        **request["allocation"],
        "granularity": "part",
        "selection": "nsga3",
        "database": "memory",
        "refit": True,
        "front": [0.4, 0.7],
        "levels": 3,
        "step": 0.1,
    }
    expect(page.locator("#d-head")).to_contain_text("per part, nsga3")

    # Half a range is the API's to refuse, in its words, with both inputs marked.
    page.fill("#front-high", "")
    page.click("#submit")
    expect(page.locator("#form-error")).to_contain_text("two numbers")


def test_delete_a_checkpoint_then_the_search_from_the_page(make_service, page, expect) -> None:
    """Delete buttons ask first, call the API and refresh; the header shows the store's size."""
    server = make_service(runner=False)
    sid, rows = _seed_front_search(server.settings)  # one succeeded export, of rows[3]
    api = httpx.Client(base_url=server.url, timeout=30)
    ck = api.get(f"/api/searches/{sid}/checkpoints").json()[0]
    archive = server.settings.resolved_checkpoint_dir() / f"{ck['id']}.tar"
    assert archive.is_file()
    answers = []  # what the next confirm() answers (True: OK)
    asked = []
    page.on(
        "dialog", lambda d: (asked.append(d.message), d.accept() if answers.pop(0) else d.dismiss())
    )

    page.goto(f"{server.url}/#/search/{sid}")
    size = page.locator("#store-size")
    expect(size).to_have_attribute("data-bytes", str(ck["size_bytes"]))
    expect(size).to_contain_text("store ")
    page.locator(f'#sparsity-chart .point[data-candidate="{rows[3].id}"] circle').click()
    expect(page.locator("#download")).to_be_visible()
    row = page.locator(f'#exports-table tr[data-checkpoint="{ck["id"]}"]')

    answers.append(False)  # Cancel: nothing happens
    row.locator("button.delete-checkpoint").click()
    expect(row).to_have_count(1)
    assert archive.is_file()
    answers.append(True)
    row.locator("button.delete-checkpoint").click()
    expect(page.locator("#exports-table")).to_have_count(0)
    assert ck["id"] in asked[-1]
    assert rows[3].key in asked[-1]
    assert not archive.exists()
    assert api.get(f"/api/checkpoints/{ck['id']}").status_code == 404
    # The candidate's panel offers a new export instead of the deleted one's download.
    expect(page.locator("#download")).to_have_count(0)
    expect(page.locator("#export-button")).to_be_visible()
    expect(size).to_have_attribute("data-bytes", "0")

    answers.append(True)
    page.click("#delete-search")
    expect(page).to_have_url(re.compile(r"#/$"))
    expect(page.locator("#search-list")).to_contain_text("No searches yet")
    assert sid in asked[-1]
    assert api.get(f"/api/searches/{sid}").status_code == 404
    api.close()
