// The selected search: its header, its progress chart, its front (chart and table), and its
// front against achieved sparsity with the held-out perplexity of its exports.

import { api } from "../api.js";
import { frontChart, measuredExports, progressChart, sparsityChart } from "../charts.js";
import { $, badge, fill, h, progressBar, stat } from "../dom.js";
import { duration, fmt, modelLabel, pct, target, when } from "../format.js";
import { ACTIVE, refresh, state } from "../state.js";
import { setBanner } from "./auth.js";
import { heldOutCard } from "./heldout.js";
import { renderCandidate } from "./candidate.js";
import { renderList } from "./list.js";
import { deleteCheckpointButton, deleteSearchButton } from "./store.js";

/** Show search `id` (null: none), loading it on the next poll. */
export function select(id) {
  if (id === state.selectedId) return;
  state.selectedId = id;
  state.search = null;
  state.generations = [];
  state.front = null;
  state.population = null;
  state.checkpoints = [];
  state.frontGeneration = "";
  state.loadedFor = null;
  state.checkpointsFor = null;
  state.candidateId = null;
  renderList();
  if (!id) {
    fill($("#detail"), h("div", { class: "card empty" }, "Select a search, or submit one."));
    return;
  }
  fill($("#detail"), h("div", { class: "card empty" }, "Loading…"));
  refresh();
}

/** One poll of the selected search; true while it is queued or running. */
export async function loadSelected() {
  const id = state.selectedId;
  let search;
  try {
    search = await api(`/api/searches/${id}`);
  } catch (err) {
    if (err.status === 404 || err.status === 422) {
      fill($("#detail"), h("div", { class: "card error" }, err.message));
      return false;
    }
    throw err;
  }
  if (id !== state.selectedId) return false; // the user moved on meanwhile
  state.search = search;
  const frontKey = `${id}:${search.progress.generation}:${search.status}:${state.frontGeneration}`;
  if (frontKey !== state.loadedFor) {
    const gen = state.frontGeneration ? `?generation=${state.frontGeneration}` : "";
    const orNull = (err) => {
      if (err.status === 404) return null;
      throw err;
    };
    const exportsKey = state.exportsVersion;
    const [generations, front, population, checkpoints] = await Promise.all([
      api(`/api/searches/${id}/generations`),
      api(`/api/searches/${id}/front${gen}`).catch(orNull),
      api(`/api/searches/${id}/candidates${gen}`).catch(orNull),
      api(`/api/searches/${id}/checkpoints`),
    ]);
    if (id !== state.selectedId) return false;
    state.generations = generations;
    state.front = front;
    state.population = population;
    state.loadedFor = frontKey;
    setCheckpoints(checkpoints, `${id}:${exportsKey}`);
    if (state.candidateId && !front?.candidates.some((c) => c.id === state.candidateId)) {
      state.candidateId = null;
    }
    if (!state.candidateId && front?.recommended_id) state.candidateId = front.recommended_id;
    renderDetail();
  } else if (`${id}:${state.exportsVersion}` !== state.checkpointsFor) {
    // An export was requested or has finished: its measurements join the sparsity chart.
    const exportsKey = state.exportsVersion;
    const checkpoints = await api(`/api/searches/${id}/checkpoints`);
    if (id !== state.selectedId) return false;
    setCheckpoints(checkpoints, `${id}:${exportsKey}`);
    renderHeader();
    renderSparsity();
    renderCandidate(); // its export panel follows an export that finished or was deleted
  } else {
    renderHeader();
  }
  return ACTIVE.has(search.status);
}

/** The search's exports; each candidate's latest one is what its export panel shows. */
function setCheckpoints(checkpoints, key) {
  state.checkpoints = checkpoints;
  state.checkpointsFor = key;
  for (const ck of [...checkpoints].reverse()) {
    if (!state.exports.has(ck.candidate_id)) {
      state.exports.set(ck.candidate_id, { checkpoint: ck, started: Date.parse(ck.created_at), error: null });
    }
  }
}

function renderDetail() {
  const detail = $("#detail");
  if (!detail.querySelector("#d-head")) {
    fill(detail,
      h("div", { id: "d-head", class: "card" }),
      h(
        "div",
        { class: "charts" },
        h("div", { id: "d-progress", class: "card" }),
        h("div", { id: "d-front", class: "card" }),
        h("div", { id: "d-sparsity", class: "card" }),
      ),
      h("div", { id: "d-candidate", class: "card" }),
    );
  }
  renderHeader();
  renderProgress();
  renderFront();
  renderSparsity();
  renderCandidate();
}

function renderHeader() {
  const x = state.search;
  const head = $("#d-head");
  if (!x || !head) return;
  const p = x.progress;
  const r = x.request;
  const a = r.allocation;
  const facts = [
    ["target", `${pct(target(r))} ${r.pattern}`],
    ["stages", r.stages],
    r.stages === "allocation" && a
      ? ["allocation", `per ${a.granularity}, ${a.selection}, ±${a.levels} × ${a.step}, database ${a.database}${a.refit ? " (refit)" : ""}`]
      : null,
    r.stages === "allocation" && a?.front ? ["sparsity front", `${pct(a.front[0])} – ${pct(a.front[1])}`] : null,
    ["population", r.population],
    ["generations", `${r.generations} per stage`],
    ["max evaluations", r.max_evaluations ?? "generations only"],
    ["metric space", r.metric_space === "first_order" ? "first order (the paper's 2,401 genomes)" : "with second-order terms (7,203 genomes)"],
    ["opening screen", r.screen?.rungs && r.screen.rungs !== "off" ? `every class on ${r.screen.rungs} (sequences x tokens), best ${pct(r.screen.keep)} of each rung promoted` : "off"],
    r.seed_genomes?.length ? ["seed genomes", r.seed_genomes.join("; ")] : null,
    ["low-fidelity screening", r.low_fidelity_samples?.length ? `${r.low_fidelity_samples.join(", ")} sequences` : "off"],
    ["seed", r.seed],
    ["objective", r.objective],
    ["calibration", `${r.calibration.n_samples} × ${r.calibration.seq_len} tokens (${r.calibration.source})`],
    ["fitness samples", r.fitness_samples ?? "all"],
    ["mask statistics", r.engine_stats === "dense" ? "dense model" : "Wanda's pruned model"],
    ["refit", r.refit_top ? `best ${r.refit_top} and Wanda re-scored refit, shipped refit` : "off (masks only)"],
    ["as-shipped re-score", r.rescore_top ? `best ${r.rescore_top} and Wanda` : "off"],
    ["created", when(x.created_at)],
    ["started", when(x.started_at)],
    ["finished", when(x.finished_at)],
    ["attempts", x.attempts],
  ];
  const result = x.result; // SearchOutcome, only when succeeded
  const factsOpen = head.querySelector("details.facts")?.open ?? false;
  fill(head,
    h(
      "div",
      { class: "title-row" },
      h("h2", {}, modelLabel(x.model)),
      badge(x.status),
      x.cancel_requested && ACTIVE.has(x.status) ? h("span", { class: "muted" }, "cancelling…") : null,
      ACTIVE.has(x.status) && !x.cancel_requested
        ? h("button", { class: "secondary", type: "button", id: "cancel", onclick: () => cancel(x.id) }, "Cancel")
        : null,
      deleteSearchButton(x),
    ),
    h("div", { class: "muted small mono" }, `search ${x.id}`),
    x.model !== modelLabel(x.model) ? h("div", { class: "muted small mono" }, x.model) : null,
    x.status === "failed"
      ? h("div", { class: "error failure", role: "alert" }, h("strong", {}, "Search failed: "), x.error ?? "no reason recorded")
      : null,
    x.status === "cancelled" ? h("div", { class: "notice" }, "This search was cancelled.") : null,
    // A published baseline beat every searched candidate as shipped: it is what was recommended.
    result?.fallback ? h("div", { class: "notice", id: "d-fallback", role: "status" }, h("strong", {}, "Baseline recommended: "), result.fallback) : null,
    h(
      "div",
      { class: "progress-row" },
      progressBar(p.generation, p.total_generations),
      h("span", { id: "d-gen" }, `generation ${p.generation} of ${p.total_generations}`),
    ),
    // Inside a long step (a screening rung, the as-shipped scoring, the held-out rows).
    p.activity && ACTIVE.has(x.status) ? activityLine(p.activity) : null,
    h(
      "dl",
      { class: "stats" },
      stat("evaluations", p.evaluations),
      stat("best error", fmt(p.best_error)),
      stat("elapsed", duration(p.elapsed_s)),
      stat("ETA", ACTIVE.has(x.status) ? duration(p.eta_s) : "–"),
      result ? stat("cache hits", result.cache_hits) : null,
      result ? stat("search time", duration(result.search_seconds)) : null,
    ),
    heldOutCard(x),
    h("details", { class: "facts", open: factsOpen }, h("summary", {}, "Request"), h("dl", { class: "kv" }, facts.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]))),
  );
}

function activityLine(a) {
  const best = a.best_error == null ? "" : `, best error ${fmt(a.best_error)}`;
  const left = a.eta_s == null ? "" : `, about ${duration(a.eta_s)} left`;
  return h(
    "div",
    { class: "progress-row activity", id: "d-activity", role: "status" },
    progressBar(a.done, a.total),
    h("span", {}, `${a.what}: ${a.done} of ${a.total} done${best}${left}`),
  );
}

async function cancel(id) {
  try {
    await api(`/api/searches/${id}/cancel`, { method: "POST" });
  } catch (err) {
    if (err.status !== 401) setBanner(err.message);
  }
  refresh();
}

function renderProgress() {
  const box = $("#d-progress");
  const gens = state.generations;
  const title = h("h3", {}, "Best error per generation");
  if (!gens.length) {
    fill(box, title, h("p", { class: "muted" }, ACTIVE.has(state.search?.status) ? "Waiting for the first generation…" : "No generation was completed."));
    return;
  }
  const last = gens.at(-1);
  fill(box,
    title,
    progressChart(gens),
    h("p", { class: "muted small" }, `${gens.length} generations, ${last.total_evaluations} evaluations, ${duration(last.elapsed_s)} of search time.`),
  );
}

function renderFront() {
  const box = $("#d-front");
  const front = state.front;
  const search = state.search;
  const done = search.progress.generation;
  const chooser = h(
    "select",
    {
      id: "front-generation",
      "aria-label": "front of generation",
      onchange: (ev) => {
        state.frontGeneration = ev.target.value;
        refresh();
      },
    },
    h("option", { value: "" }, search.status === "succeeded" ? "final front" : "latest generation"),
    Array.from({ length: done }, (_, i) => h("option", { value: String(i + 1) }, `generation ${i + 1}`)),
  );
  chooser.value = state.frontGeneration;
  const title = h("div", { class: "title-row" }, h("h3", {}, "Pareto front"), done ? chooser : null);
  if (!front || !front.candidates.length) {
    fill(box, title, h("p", { class: "muted" }, ACTIVE.has(search.status) ? "No front yet: it appears after the first generation." : "This search has no front."));
    return;
  }
  const cands = front.candidates;
  // Shown only as the API reports them (Wanda, OWL+Wanda); the dashboard never computes any.
  const baselines = front.baselines;
  // The whole population of the shown generation (grey); the front is part of it.
  const members = state.population?.candidates ?? [];
  const svg = frontChart({ members, candidates: cands, baselines, selectedId: state.candidateId, onChoose: chooseCandidate });
  const table = h(
    "table",
    { class: "front-table" },
    h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "metric"), h("th", { class: "num" }, "error"), h("th", { class: "num" }, "gap"), h("th", { class: "num" }, "sparsity"))),
    h(
      "tbody",
      {},
      cands.map((c) =>
        h(
          "tr",
          {
            class: `${c.id === state.candidateId ? "selected" : ""}`,
            "data-candidate": c.id,
            onclick: () => chooseCandidate(c.id),
          },
          h("td", {}, c.recommended ? h("span", { class: "star", title: "recommended" }, "★") : ""),
          h("td", { class: "mono clamp" }, c.genome.formula),
          h("td", { class: "num" }, fmt(c.objectives.error)),
          h("td", { class: "num" }, fmt(c.objectives.gap)),
          h("td", { class: "num" }, pct(c.sparsity)),
        ),
      ),
    ),
  );
  const legend = h(
    "p",
    { class: "muted small" },
    `${cands.length} candidate${cands.length === 1 ? "" : "s"}${front.generation ? ` on the front of generation ${front.generation}` : " on the final front"}. Click one for details. `,
    members.length ? `Grey: all ${members.length} candidates of generation ${state.population.generation}'s population. ` : "",
    baselines.length ? "Diamonds: baselines reported by the API." : "The API reports no baseline evaluations for this search.",
  );
  fill(box, title, svg, legend, table);
}

function renderSparsity() {
  const box = $("#d-sparsity");
  const front = state.front;
  const search = state.search;
  if (!box || !search) return;
  const range = search.request.stages === "allocation" ? search.request.allocation?.front : null;
  const title = h("h3", {}, range ? "Front across sparsities" : "Error and perplexity against sparsity");
  if (!front || !front.candidates.length) {
    fill(box, title, h("p", { class: "muted" }, "The front's errors against their achieved sparsity appear with the front."));
    return;
  }
  const members = state.population?.candidates ?? [];
  const exports = state.checkpoints;
  const measured = measuredExports(exports);
  const svg = sparsityChart({
    members,
    candidates: front.candidates,
    baselines: front.baselines,
    exports,
    selectedId: state.candidateId,
    onChoose: chooseCandidate,
  });
  const legend = h(
    "p",
    { class: "muted small" },
    range
      ? `Each front member reaches its own sparsity in ${pct(range[0])} – ${pct(range[1])}: choose one (click it), then export it below. `
      : `The front's members against their achieved sparsity (target ${pct(target(search.request))}); click one to see or export it. `,
    measured.length
      ? `Squares: held-out perplexity of ${measured.length} exported checkpoint${measured.length === 1 ? "" : "s"} at their measured sparsity (right axis).`
      : "Exported checkpoints add their held-out perplexity here once measured.",
  );
  fill(box, title, svg, legend, exports.length ? exportsTable(exports) : null);
}

function exportsTable(exports) {
  const onFront = new Set(state.front.candidates.map((c) => c.id));
  return h(
    "table",
    { class: "front-table", id: "exports-table" },
    h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "exported candidate"), h("th", { class: "num" }, "status"), h("th", { class: "num" }, "sparsity"), h("th", { class: "num" }, "perplexity"), h("th", {}, ""))),
    h(
      "tbody",
      {},
      exports.map((e) =>
        h(
          "tr",
          {
            "data-checkpoint": e.id,
            "data-candidate": onFront.has(e.candidate_id) ? e.candidate_id : null,
            class: e.candidate_id === state.candidateId ? "selected" : null,
            onclick: onFront.has(e.candidate_id) ? () => chooseCandidate(e.candidate_id) : null,
          },
          h("td", {}, onFront.has(e.candidate_id) ? h("span", { title: "on the shown front: click to choose it" }, "●") : ""),
          h("td", { class: "mono clamp" }, e.candidate_key),
          h("td", { class: "num" }, e.status),
          h("td", { class: "num" }, pct(e.sparsity)),
          h("td", { class: "num" }, fmt(e.perplexity)),
          h("td", { class: "num" }, deleteCheckpointButton(e)),
        ),
      ),
    ),
  );
}

function chooseCandidate(id) {
  state.candidateId = id;
  for (const el of document.querySelectorAll("[data-candidate]")) {
    el.classList.toggle("selected", el.dataset.candidate === id);
  }
  renderCandidate();
}
