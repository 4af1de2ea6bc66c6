// The chosen front member: its metric, its per-block (and per-layer) sparsity, and its
// checkpoint export.

import { api, apiKey, readBody } from "../api.js";
import { blockChart } from "../charts.js";
import { $, fill, h, progressBar, stat } from "../dom.js";
import { bytes, duration, fmt, pct, target } from "../format.js";
import { ACTIVE, refresh, schedule, state } from "../state.js";
import { measurementsPanel } from "./measurements.js";

function isWanda(g) {
  // The all-identity genome is exactly Wanda's score (README: the meta metric).
  return g.f1 === "identity" && g.f2 === "identity" && g.alpha === "one" && g.beta === "one";
}

export function renderCandidate() {
  const box = $("#d-candidate");
  if (!box) return;
  const c = state.front?.candidates.find((x) => x.id === state.candidateId);
  box.hidden = !state.front?.candidates.length;
  if (!c) {
    fill(box, h("h3", {}, "Candidate"), h("p", { class: "muted" }, "Click a point of the front to see its metric, its per-block sparsity and to export it."));
    return;
  }
  const gnm = c.genome;
  const search = state.search;
  const request = search.request;
  // A front across sparsities: every member has its own sparsity, none is held to the target.
  const acrossSparsities = request.stages === "allocation" && Boolean(request.allocation?.front);
  const layered = c.layer_sparsity?.length > 0;
  fill(box,
    h(
      "div",
      { class: "title-row" },
      h("h3", {}, "Candidate"),
      c.recommended ? h("span", { class: "badge recommended" }, "recommended") : null,
      acrossSparsities
        ? h("span", { class: "badge" }, `${pct(c.sparsity)} sparse`)
        : c.meets_target
          ? h("span", { class: "badge ok" }, "meets target")
          : h("span", { class: "badge warn" }, "misses target"),
      isWanda(gnm) ? h("span", { class: "badge", title: "the all-identity genome is Wanda's |W|·sqrt(X)" }, "Wanda's metric") : null,
    ),
    h("div", { class: "muted small mono" }, `${c.key} · ${c.id}`),
    h("div", { class: "cols" },
      h(
        "div",
        {},
        h("h4", {}, "Metric"),
        h("p", { class: "formula", id: "formula" }, gnm.formula),
        h(
          "dl",
          { class: "kv" },
          [
            ["F1 (on |W|)", gnm.f1],
            ["F2 (on X)", gnm.f2],
            ["α (|W| coefficient)", gnm.alpha],
            ["β (X coefficient)", gnm.beta],
            ["genome index", gnm.index],
          ].map(([k, v]) => [h("dt", {}, k), h("dd", { class: "mono" }, String(v))]),
        ),
        h(
          "dl",
          { class: "stats" },
          stat("error", fmt(c.objectives.error)),
          stat("sparsity gap", fmt(c.objectives.gap)),
          stat("sparsity", pct(c.sparsity)),
          stat("error samples", c.n_samples),
        ),
      ),
      h(
        "div",
        {},
        h("h4", {}, `Per-block sparsity (${c.block_sparsity.length} blocks${layered ? ", the mean of each block's layers" : ""})`),
        acrossSparsities ? blockChart(c.block_sparsity, c.sparsity, "achieved") : blockChart(c.block_sparsity, target(request)),
      ),
    ),
    layered ? layerView(c) : null,
    h("div", { id: "export", class: "export" }, exportView(c)),
  );
}

// Llama-style blocks (Llama, Mistral, Qwen2, Gemma) list their seven linears in this order.
const LLAMA_LAYERS = ["q", "k", "v", "o", "gate", "up", "down"];

/** The allocation stage's per-layer sparsities: one row per block, one cell per linear. */
function layerView(c) {
  const values = c.layer_sparsity;
  const blocks = c.block_sparsity.length;
  const perBlock = blocks && values.length % blocks === 0 ? values.length / blocks : values.length;
  const names = perBlock === LLAMA_LAYERS.length ? LLAMA_LAYERS : Array.from({ length: perBlock }, (_, i) => `#${i + 1}`);
  const rows = [];
  for (let b = 0; b * perBlock < values.length; b += 1) rows.push(values.slice(b * perBlock, (b + 1) * perBlock));
  const hi = Math.max(1e-9, ...values);
  const cell = (v, b, i) => {
    const td = h("td", { class: `num layer-cell${v === 0 ? " dense" : ""}`, "data-block": b, "data-layer": i, title: `block ${b}, ${names[i]}: ${pct(v)}` }, v === 0 ? "dense" : pct(v));
    td.style.backgroundColor = `rgba(139, 70, 201, ${(0.08 + 0.5 * (v / hi)).toFixed(3)})`; // CSSOM: allowed by the CSP
    return td;
  };
  return h(
    "div",
    { class: "layers" },
    h("h4", {}, `Per-layer sparsity (${values.length} layers, ${perBlock} per block)`),
    h(
      "table",
      { class: "layer-table", id: "layer-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "block"), names.map((n) => h("th", { class: "num" }, n)))),
      h("tbody", {}, rows.map((row, b) => h("tr", {}, h("th", {}, String(b)), row.map((v, i) => cell(v, b, i))))),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Export and download

function exportView(c) {
  const search = state.search;
  const job = state.exports.get(c.id);
  if (search.status !== "succeeded") {
    return h("p", { class: "muted" }, `Checkpoints can be exported once the search has succeeded (it is ${search.status}).`);
  }
  if (!job) {
    return h("button", { id: "export-button", type: "button", onclick: () => startExport(c.id) }, "Export checkpoint");
  }
  if (job.error) {
    return h(
      "div",
      {},
      h("div", { class: "error", role: "alert" }, `Export failed: ${job.error}`),
      h("button", { id: "export-button", type: "button", onclick: () => startExport(c.id) }, "Try again"),
    );
  }
  const ck = job.checkpoint;
  if (!ck || ACTIVE.has(ck.status)) {
    const elapsed = (Date.now() - job.started) / 1000;
    const p = ck?.progress; // blocks pruned (and refit) so far, once the runner reports them
    const where = p ? `: ${p.stage}, block ${p.done} of ${p.total}${p.eta_s != null ? `, about ${duration(p.eta_s)} left` : ""}` : "…";
    return h(
      "div",
      { class: "export-progress" },
      h("span", { id: "export-status" }, `Export ${ck ? ck.status : "requested"}${where} (${duration(elapsed)})`),
      p ? progressBar(p.done, p.total) : progressBar(0, 1, { indeterminate: true }),
    );
  }
  if (ck.status !== "succeeded") {
    return h(
      "div",
      {},
      h("div", { class: "error", role: "alert" }, `Export ${ck.status}: ${ck.error ?? "no reason recorded"}`),
      h("button", { id: "export-button", type: "button", onclick: () => startExport(c.id) }, "Try again"),
    );
  }
  const link = h(
    "a",
    {
      id: "download",
      class: "button",
      href: ck.download_url,
      download: `optishear-${ck.id}.tar`,
      onclick: (ev) => downloadWithKey(ev, ck),
    },
    `Download checkpoint (${bytes(ck.size_bytes)})`,
  );
  return h(
    "div",
    {},
    h(
      "dl",
      { class: "stats" },
      stat("status", ck.status),
      stat("held-out perplexity", fmt(ck.perplexity)),
      stat("eval tokens", ck.eval_tokens ?? "–"),
      stat("measured sparsity", pct(ck.sparsity)),
      stat("size", bytes(ck.size_bytes)),
    ),
    h("div", { class: "small mono", id: "export-sha" }, `sha256 ${ck.sha256}`),
    link,
    h("span", { id: "download-status", class: "muted small" }),
    measurementsPanel(ck),
  );
}

async function startExport(candidateId) {
  const search = state.search;
  state.exports.set(candidateId, { checkpoint: null, started: Date.now(), error: null });
  renderCandidate();
  try {
    const ck = await api(`/api/searches/${search.id}/checkpoints`, { method: "POST", body: { candidate_id: candidateId } });
    state.exports.set(candidateId, { checkpoint: ck, started: Date.now(), error: null });
    state.exportsVersion += 1; // the search's list of exports has it now
  } catch (err) {
    state.exports.set(candidateId, { checkpoint: null, started: Date.now(), error: err.message });
  }
  if (candidateId === state.candidateId) renderCandidate();
  schedule(1000);
}

/** One poll of the exports in progress; true while any is queued or running. */
export async function pollExports() {
  let busy = false;
  for (const [candidateId, job] of state.exports) {
    const ck = job.checkpoint;
    if (!ck || !ACTIVE.has(ck.status)) continue;
    busy = true;
    try {
      job.checkpoint = await api(`/api/checkpoints/${ck.id}`);
    } catch (err) {
      if (err.status === 0 || err.status === 401) throw err;
      job.error = err.message;
    }
    if (!ACTIVE.has(job.checkpoint.status)) {
      state.exportsVersion += 1; // finished: its perplexity joins the sparsity chart
      refresh(); // inside a poll: one more right after it
    }
    const candidate = state.front?.candidates.find((c) => c.id === candidateId);
    const box = $("#export");
    if (candidate && candidateId === state.candidateId && box) fill(box, exportView(candidate));
  }
  return busy;
}

async function downloadWithKey(ev, ck) {
  // A plain link cannot send the X-API-Key header: with a key, fetch the archive and hand the
  // browser a blob. Without one, the link streams the file directly.
  const key = apiKey();
  if (!key) return;
  ev.preventDefault();
  const status = $("#download-status");
  status.textContent = "downloading…";
  try {
    const response = await fetch(ck.download_url, { headers: { "X-API-Key": key } });
    if (!response.ok) {
      const body = await readBody(response);
      throw new Error(body?.detail ?? `HTTP ${response.status}`);
    }
    const total = Number(response.headers.get("content-length")) || ck.size_bytes;
    const reader = response.body.getReader();
    const chunks = [];
    let got = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      got += value.length;
      status.textContent = `downloading… ${total ? Math.floor((100 * got) / total) : 0}%`;
    }
    const url = URL.createObjectURL(new Blob(chunks, { type: "application/x-tar" }));
    const a = h("a", { href: url, download: `optishear-${ck.id}.tar` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    status.textContent = "downloaded";
  } catch (err) {
    status.textContent = `download failed: ${err.message}`;
  }
}
