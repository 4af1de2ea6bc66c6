// OptiShear dashboard: one module, no dependencies. It reads only the public REST API
// (/api/...), polls while anything is queued or running, and draws its charts as plain SVG.
// Text from the API is always inserted as text nodes, never parsed as markup.

const KEY_STORE = "optishear.apiKey";
const FAST_POLL_MS = 2000; // while a search or an export is queued or running
const IDLE_POLL_MS = 15000; // otherwise: catches searches submitted elsewhere
const OFFLINE_POLL_MS = 5000;
const ACTIVE = new Set(["queued", "running"]);
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  searches: [],
  total: 0,
  selectedId: null,
  search: null,
  generations: [],
  front: null,
  population: null, // the shown generation's whole population (GET .../candidates)
  frontGeneration: "", // "" = default: the final front when finished, else the latest
  loadedFor: null, // "<id>:<generations done>:<status>:<front generation>" of the loaded charts
  candidateId: null,
  exports: new Map(), // candidate id -> {checkpoint, started, error}
  timer: null,
  running: false,
  again: false,
  idempotencyKey: null,
};

// ---------------------------------------------------------------------------------------------
// API access

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status; // 0: the API could not be reached
    this.body = body;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORE);
}

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const h = { Accept: "application/json", ...headers };
  const key = apiKey();
  if (key) h["X-API-Key"] = key;
  if (body !== undefined) h["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, `Cannot reach the API at ${location.origin} (${err.message}).`);
  }
  const data = await readBody(response);
  if (response.status === 401) {
    const detail = data?.detail ?? "a valid API key is required";
    askForKey(key ? `The API refused this key: ${detail}` : `This API needs a key: ${detail}`);
    throw new ApiError(401, detail, data);
  }
  if (!response.ok) {
    const detail = typeof data?.detail === "string" ? data.detail : null;
    throw new ApiError(
      response.status,
      detail ?? `${method} ${path} failed: HTTP ${response.status} ${response.statusText}`,
      data,
    );
  }
  return data;
}

async function readBody(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { detail: text.slice(0, 500) };
  }
}

// ---------------------------------------------------------------------------------------------
// Small DOM and formatting helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  el.append(...children.flat(Infinity).filter(keep));
  return el;
}

function keep(c) {
  return c !== null && c !== undefined && c !== false;
}

function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter(keep));
}

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  el.append(...children.flat(Infinity).filter(keep));
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
}

const $ = (sel) => document.querySelector(sel);

function fmt(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1e5 || a < 1e-3) return x.toExponential(digits - 1);
  return String(Number(x.toPrecision(digits)));
}

function pct(x) {
  return x === null || x === undefined ? "–" : `${Number((x * 100).toFixed(2))}%`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const sec = Math.max(0, Math.round(seconds));
  if (sec < 60) return `${sec} s`;
  const m = Math.floor(sec / 60);
  if (m < 60) return `${m} min ${sec % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

function ago(iso) {
  const sec = (Date.now() - new Date(iso).getTime()) / 1000;
  if (sec < 60) return "just now";
  if (sec < 3600) return `${Math.floor(sec / 60)} min ago`;
  if (sec < 86400) return `${Math.floor(sec / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

function modelLabel(model) {
  // An HF folder path is long; its last component names it well enough in a list.
  const parts = model.split(/[\\/]/).filter(Boolean);
  return parts.length > 1 ? `…/${parts.slice(-2).join("/")}` : model;
}

function target(request) {
  if (request.sparsity !== null && request.sparsity !== undefined) return request.sparsity;
  const nm = /^(\d+):(\d+)$/.exec(request.pattern ?? "");
  return nm ? Number(nm[1]) / Number(nm[2]) : 0.5;
}

function badge(status) {
  return h("span", { class: `badge ${status}`, "data-status": status }, status);
}

function progressBar(done, total, { indeterminate = false } = {}) {
  const bar = h("div", { class: `bar${indeterminate ? " indeterminate" : ""}` });
  const fill = h("div", { class: "fill" });
  fill.style.width = indeterminate ? "30%" : `${total ? Math.min(100, (100 * done) / total) : 0}%`;
  bar.append(fill);
  bar.setAttribute("role", "progressbar");
  if (!indeterminate) {
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", String(total));
    bar.setAttribute("aria-valuenow", String(done));
  }
  return bar;
}

// ---------------------------------------------------------------------------------------------
// Connection banner and API key

function setBanner(message, kind = "error") {
  const el = $("#banner");
  el.hidden = !message;
  el.className = `banner ${kind}`;
  el.textContent = message ?? "";
}

function setConnection(ok) {
  const el = $("#conn");
  el.textContent = ok ? "connected" : "offline";
  el.className = `conn ${ok ? "ok" : "down"}`;
}

function askForKey(message) {
  $("#auth").hidden = false;
  $("#auth-message").textContent = message;
  $("#main").classList.add("locked");
  $("#auth-key").focus();
}

function setupAuth() {
  $("#auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("#auth-key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    $("#auth-key").value = "";
    $("#auth").hidden = true;
    $("#main").classList.remove("locked");
    updateKeyButton();
    loadModels();
    refresh();
  });
  $("#key-button").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    updateKeyButton();
    askForKey("The key was forgotten. Enter a key to continue.");
  });
  updateKeyButton();
}

function updateKeyButton() {
  const btn = $("#key-button");
  btn.hidden = !apiKey();
  btn.textContent = "Forget API key";
}

// ---------------------------------------------------------------------------------------------
// Polling: one loop for the list, the selected search and exports in progress

function schedule(ms) {
  clearTimeout(state.timer);
  state.timer = setTimeout(refresh, ms);
}

async function refresh() {
  if (state.running) {
    state.again = true; // coalesce: one request cycle at a time
    return;
  }
  state.running = true;
  let next = IDLE_POLL_MS;
  try {
    const page = await api("/api/searches?limit=50");
    state.searches = page.items;
    state.total = page.total;
    renderList();
    let busy = state.searches.some((x) => ACTIVE.has(x.status));
    if (state.selectedId) busy = (await loadSelected()) || busy;
    busy = (await pollExports()) || busy;
    setConnection(true);
    setBanner(null);
    next = busy && !document.hidden ? FAST_POLL_MS : IDLE_POLL_MS; // a hidden tab polls slowly
  } catch (err) {
    if (err.status === 0) {
      setConnection(false);
      setBanner(`${err.message} Retrying every ${OFFLINE_POLL_MS / 1000} s.`);
      next = OFFLINE_POLL_MS;
    } else if (err.status === 401) {
      next = IDLE_POLL_MS; // the key form restarts polling when a key is entered
    } else {
      setBanner(err.message);
      next = OFFLINE_POLL_MS;
    }
  } finally {
    state.running = false;
  }
  if (state.again) {
    state.again = false;
    next = 0;
  }
  schedule(next);
}

async function loadModels() {
  try {
    const models = await api("/api/models");
    fill($("#models"),
      ...models.map((m) => h("option", { value: m.name }, `${m.description}${m.cached ? "" : " (not cached yet)"}`)),
    );
  } catch {
    // The list is a convenience; polling reports connection problems.
  }
}

// ---------------------------------------------------------------------------------------------
// The list of searches

function renderList() {
  const list = $("#search-list");
  $("#search-count").textContent =
    state.total > state.searches.length ? `(newest ${state.searches.length} of ${state.total})` : `(${state.total})`;
  if (!state.searches.length) {
    fill(list, h("li", { class: "muted empty-list" }, "No searches yet."));
    return;
  }
  fill(list,
    ...state.searches.map((x) => {
      const p = x.progress;
      const r = x.request;
      return h(
        "li",
        {
          class: `search-item${x.id === state.selectedId ? " selected" : ""}`,
          "data-id": x.id,
          "data-status": x.status,
        },
        h(
          "a",
          { href: `#/search/${x.id}`, title: x.model },
          h("div", { class: "line" }, badge(x.status), h("span", { class: "model" }, modelLabel(x.model))),
          h(
            "div",
            { class: "line muted small" },
            `${pct(target(r))} ${r.pattern} · pop ${r.population} · ${ago(x.created_at)}`,
          ),
          h(
            "div",
            { class: "line small" },
            progressBar(p.generation, p.total_generations),
            h("span", { class: "gen" }, `gen ${p.generation}/${p.total_generations}`),
            p.best_error !== null ? h("span", { class: "muted" }, `best ${fmt(p.best_error)}`) : null,
          ),
          x.status === "failed" && x.error ? h("div", { class: "line error small clamp", title: x.error }, x.error) : null,
        ),
      );
    }),
  );
}

// ---------------------------------------------------------------------------------------------
// The submit form: sends only the fields filled in, shows the API's messages verbatim

const TEXT_FIELDS = new Set(["model", "pattern", "stages", "objective", "calibration.source", "evaluation.text"]);

function formBody(form) {
  const body = {};
  for (const el of form.elements) {
    if (!el.name || el.value.trim() === "") continue;
    const raw = el.value.trim();
    // Numbers go as numbers; anything else is sent as typed, so the API explains what is wrong.
    const value = TEXT_FIELDS.has(el.name) || Number.isNaN(Number(raw)) ? raw : Number(raw);
    const path = el.name.split(".");
    let obj = body;
    for (const part of path.slice(0, -1)) obj = obj[part] ??= {};
    obj[path.at(-1)] = value;
  }
  return body;
}

function randomKey() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function setupForm() {
  const form = $("#search-form");
  form.addEventListener("input", () => {
    state.idempotencyKey = null; // a changed body is a new search, not a retry
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const errorBox = $("#form-error");
    const button = $("#submit");
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    errorBox.hidden = true;
    button.disabled = true;
    button.textContent = "Submitting…";
    // The same key for retries of the same body: a double submit makes one search.
    state.idempotencyKey ??= randomKey();
    try {
      const search = await api("/api/searches", {
        method: "POST",
        body: formBody(form),
        headers: { "Idempotency-Key": state.idempotencyKey },
      });
      state.idempotencyKey = null;
      location.hash = `#/search/${search.id}`;
      refresh();
    } catch (err) {
      errorBox.hidden = false;
      fill(errorBox,
        h("strong", {}, err.status ? `HTTP ${err.status}: ` : ""),
        document.createTextNode(err.message),
      );
      for (const e of err.body?.errors ?? []) {
        const name = (e.loc ?? []).filter((p) => p !== "body").join(".");
        const field = name && form.elements.namedItem(name);
        if (field) field.setAttribute("aria-invalid", "true");
      }
    } finally {
      button.disabled = false;
      button.textContent = "Submit search";
    }
  });
}

// ---------------------------------------------------------------------------------------------
// The selected search

function select(id) {
  if (id === state.selectedId) return;
  state.selectedId = id;
  state.search = null;
  state.generations = [];
  state.front = null;
  state.population = null;
  state.frontGeneration = "";
  state.loadedFor = null;
  state.candidateId = null;
  renderList();
  if (!id) {
    fill($("#detail"), h("div", { class: "card empty" }, "Select a search, or submit one."));
    return;
  }
  fill($("#detail"), h("div", { class: "card empty" }, "Loading…"));
  refresh();
}

async function loadSelected() {
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
    const [generations, front, population] = await Promise.all([
      api(`/api/searches/${id}/generations`),
      api(`/api/searches/${id}/front${gen}`).catch(orNull),
      api(`/api/searches/${id}/candidates${gen}`).catch(orNull),
    ]);
    if (id !== state.selectedId) return false;
    state.generations = generations;
    state.front = front;
    state.population = population;
    state.loadedFor = frontKey;
    if (state.candidateId && !front?.candidates.some((c) => c.id === state.candidateId)) {
      state.candidateId = null;
    }
    if (!state.candidateId && front?.recommended_id) state.candidateId = front.recommended_id;
    renderDetail();
  } else {
    renderHeader();
  }
  return ACTIVE.has(search.status);
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
      ),
      h("div", { id: "d-candidate", class: "card" }),
    );
  }
  renderHeader();
  renderProgressChart();
  renderFront();
  renderCandidate();
}

function renderHeader() {
  const x = state.search;
  const head = $("#d-head");
  if (!x || !head) return;
  const p = x.progress;
  const r = x.request;
  const facts = [
    ["target", `${pct(target(r))} ${r.pattern}`],
    ["stages", r.stages],
    ["population", r.population],
    ["generations", `${r.generations} per stage`],
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
  const result = x.result;
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
    ),
    h("div", { class: "muted small mono" }, `search ${x.id}`),
    x.model !== modelLabel(x.model) ? h("div", { class: "muted small mono" }, x.model) : null,
    x.status === "failed"
      ? h("div", { class: "error failure", role: "alert" }, h("strong", {}, "Search failed: "), x.error ?? "no reason recorded")
      : null,
    x.status === "cancelled" ? h("div", { class: "notice" }, "This search was cancelled.") : null,
    h(
      "div",
      { class: "progress-row" },
      progressBar(p.generation, p.total_generations),
      h("span", { id: "d-gen" }, `generation ${p.generation} of ${p.total_generations}`),
    ),
    h(
      "dl",
      { class: "stats" },
      stat("evaluations", p.evaluations),
      stat("best error", fmt(p.best_error)),
      stat("elapsed", duration(p.elapsed_s)),
      stat("ETA", ACTIVE.has(x.status) ? duration(p.eta_s) : "–"),
      result ? stat("cache hits", result.cache_hits ?? "–") : null,
      result ? stat("search time", duration(result.search_seconds)) : null,
    ),
    h("details", { class: "facts", open: factsOpen }, h("summary", {}, "Request"), h("dl", { class: "kv" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]))),
  );
}

function stat(label, value) {
  return h("div", {}, h("dt", {}, label), h("dd", {}, String(value)));
}

async function cancel(id) {
  try {
    await api(`/api/searches/${id}/cancel`, { method: "POST" });
  } catch (err) {
    if (err.status !== 401) setBanner(err.message);
  }
  refresh();
}

// ---------------------------------------------------------------------------------------------
// SVG charts

const W = 520;
const H = 300;
const M = { top: 16, right: 18, bottom: 44, left: 64 };

function extent(values, { zero = false } = {}) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (zero) lo = Math.min(lo, 0);
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  if (lo === hi) {
    const pad = Math.abs(lo) * 0.1 || 0.01;
    return [zero && lo >= 0 ? 0 : lo - pad, hi + pad];
  }
  const pad = (hi - lo) * 0.08;
  return [zero && lo >= 0 ? Math.max(0, lo - pad) : lo - pad, hi + pad];
}

function padLeft([lo, hi]) {
  // Room between the y axis and points at the domain's start, so they never hide its labels.
  return [lo - (hi - lo) * 0.04, hi];
}

function ticks([lo, hi], count = 5) {
  const step0 = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => (hi - lo) / st <= count) ?? 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function frame(xDomain, yDomain, xLabel, yLabel, { xTicks } = {}) {
  const x = (v) => M.left + ((v - xDomain[0]) / (xDomain[1] - xDomain[0])) * (W - M.left - M.right);
  const y = (v) => H - M.bottom - ((v - yDomain[0]) / (yDomain[1] - yDomain[0])) * (H - M.top - M.bottom);
  const g = s("g", { class: "axes" });
  for (const t of ticks(yDomain)) {
    g.append(
      s("line", { class: "grid", x1: M.left, x2: W - M.right, y1: y(t), y2: y(t) }),
      s("text", { x: M.left - 6, y: y(t) + 4, "text-anchor": "end" }, fmt(t, 3)),
    );
  }
  for (const t of xTicks ?? ticks(xDomain)) {
    g.append(
      s("line", { class: "tick", x1: x(t), x2: x(t), y1: H - M.bottom, y2: H - M.bottom + 4 }),
      s("text", { x: x(t), y: H - M.bottom + 17, "text-anchor": "middle" }, fmt(t, 3)),
    );
  }
  g.append(
    s("line", { class: "axis", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }),
    s("line", { class: "axis", x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom }),
    s("text", { class: "label", x: (M.left + W - M.right) / 2, y: H - 6, "text-anchor": "middle" }, xLabel),
    s("text", { class: "label", transform: `translate(14 ${(M.top + H - M.bottom) / 2}) rotate(-90)`, "text-anchor": "middle" }, yLabel),
  );
  return { x, y, g };
}

function svgRoot(label, id) {
  return s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": label, id });
}

function renderProgressChart() {
  const box = $("#d-progress");
  const gens = state.generations;
  const title = h("h3", {}, "Best error per generation");
  if (!gens.length) {
    fill(box, title, h("p", { class: "muted" }, ACTIVE.has(state.search?.status) ? "Waiting for the first generation…" : "No generation was completed."));
    return;
  }
  const xs = gens.map((g) => g.number);
  const xDomain = padLeft(xs.length === 1 ? [xs[0] - 1, xs[0] + 1] : [xs[0], xs.at(-1)]);
  const yDomain = extent(gens.map((g) => g.best_error));
  const step = Math.max(1, Math.ceil(xs.length / 10));
  const xTicks = xs.filter((_, i) => i % step === 0);
  const { x, y, g } = frame(xDomain, yDomain, "generation", "best error", { xTicks });
  const svg = svgRoot("best error per generation", "progress-chart");
  svg.append(g);
  // Stage boundaries: the layer-wise stage starts over from the metric stage's winner.
  const stages = [];
  gens.forEach((gen, i) => {
    if (i === 0 || gen.stage !== gens[i - 1].stage) stages.push(gen);
  });
  for (const st of stages) {
    const sx = st === gens[0] ? x(xDomain[0]) : x(st.number - 0.5);
    if (st !== gens[0]) svg.append(s("line", { class: "stage-line", x1: sx, x2: sx, y1: M.top, y2: H - M.bottom }));
    svg.append(s("text", { class: "stage-label", x: sx + 4, y: M.top + 10 }, st.stage));
  }
  for (const stage of new Set(gens.map((g2) => g2.stage))) {
    const pts = gens.filter((g2) => g2.stage === stage);
    svg.append(
      s("polyline", {
        class: `line stage-${stage}`,
        points: pts.map((g2) => `${x(g2.number)},${y(g2.best_error)}`).join(" "),
      }),
    );
  }
  for (const gen of gens) {
    svg.append(
      s(
        "circle",
        { class: `gen-point stage-${gen.stage}`, cx: x(gen.number), cy: y(gen.best_error), r: 4, "data-generation": gen.number },
        s("title", {}, `generation ${gen.number} (${gen.stage} ${gen.stage_generation}): best error ${fmt(gen.best_error)}, ${gen.evaluations} evaluations, ${fmt(gen.seconds, 3)} s`),
      ),
    );
  }
  const last = gens.at(-1);
  fill(box,
    title,
    svg,
    h("p", { class: "muted small" }, `${gens.length} generations, ${last.total_evaluations} evaluations, ${duration(last.elapsed_s)} of search time.`),
  );
}

function spread(ratios) {
  // Standard deviation of a plan's per-block sparsity: 0 for a uniform plan. Every candidate
  // meets the target exactly (gap 0), so this, not the gap, tells plans apart on the chart.
  if (!ratios?.length) return 0;
  const mean = ratios.reduce((a, r) => a + r, 0) / ratios.length;
  return Math.sqrt(ratios.reduce((a, r) => a + (r - mean) ** 2, 0) / ratios.length);
}

function baselinesOf(front, search) {
  // Shown only when the API reports them; the dashboard never computes or invents any.
  const raw = front?.baselines ?? search?.result?.baselines ?? [];
  if (!Array.isArray(raw)) return [];
  return raw
    .map((b) => ({
      name: b.name ?? b.method ?? "baseline",
      error: b.objectives?.error ?? b.error,
      gap: b.objectives?.gap ?? b.gap ?? 0,
      spread: spread(b.block_sparsity ?? b.ratios),
    }))
    .filter((b) => Number.isFinite(b.error) && Number.isFinite(b.gap));
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
  const baselines = baselinesOf(front, search);
  // The whole population of the shown generation (grey); the front is part of it.
  const members = state.population?.candidates ?? [];
  const all = [
    ...members.map((c) => ({ spread: spread(c.block_sparsity), error: c.objectives.error })),
    ...cands.map((c) => ({ spread: spread(c.block_sparsity), error: c.objectives.error })),
    ...baselines,
  ];
  const xDomain = padLeft(extent(all.map((o) => o.spread), { zero: true }));
  const yDomain = extent(all.map((o) => o.error));
  const { x, y, g } = frame(xDomain, yDomain, "per-block sparsity spread (std across blocks)", "reconstruction error");
  const svg = svgRoot("Candidates: reconstruction error against the spread of per-block sparsity", "front-chart");
  svg.append(g);
  for (const m of members) {
    svg.append(
      s(
        "circle",
        { class: `pop-point${m.on_front ? " on-front" : ""}`, cx: x(spread(m.block_sparsity)), cy: y(m.objectives.error), r: 4, "data-key": m.key },
        s("title", {}, `${m.genome.formula}\nerror ${fmt(m.objectives.error)}, spread ${fmt(spread(m.block_sparsity))}, gap ${fmt(m.objectives.gap)}${m.on_front ? " (front)" : ""}`),
      ),
    );
  }
  for (const b of baselines) {
    const bx = x(b.spread);
    const by = y(b.error);
    svg.append(
      s(
        "g",
        { class: "baseline", "data-baseline": b.name },
        s("path", { d: `M${bx},${by - 7} L${bx + 7},${by} L${bx},${by + 7} L${bx - 7},${by} Z` }),
        // Near the right edge the label goes to the marker's left, so it is never cut off.
        bx > W - M.right - 90
          ? s("text", { x: bx - 10, y: by + 4, "text-anchor": "end" }, b.name)
          : s("text", { x: bx + 10, y: by + 4 }, b.name),
        s("title", {}, `${b.name}: error ${fmt(b.error)}, spread ${fmt(b.spread)}, gap ${fmt(b.gap)}`),
      ),
    );
  }
  // The recommended point is drawn last so that it stays on top.
  const order = [...cands].sort((a, b) => Number(a.recommended) - Number(b.recommended));
  for (const c of order) {
    const cx = x(spread(c.block_sparsity));
    const cy = y(c.objectives.error);
    const point = s(
      "g",
      {
        class: `point${c.recommended ? " recommended" : ""}${c.id === state.candidateId ? " selected" : ""}`,
        "data-candidate": c.id,
        tabindex: 0,
        role: "button",
        "aria-label": `candidate ${c.key}: error ${fmt(c.objectives.error)}`,
        onclick: () => chooseCandidate(c.id),
        onkeydown: (ev) => {
          if (ev.key === "Enter" || ev.key === " ") {
            ev.preventDefault();
            chooseCandidate(c.id);
          }
        },
      },
      s("circle", { cx, cy, r: c.recommended ? 8 : 6 }),
      c.recommended ? s("text", { x: cx + 11, y: cy - 8, class: "rec-label" }, "recommended") : null,
      s("title", {}, `${c.genome.formula}\nerror ${fmt(c.objectives.error)}, gap ${fmt(c.objectives.gap)}, sparsity ${pct(c.sparsity)}`),
    );
    svg.append(point);
  }
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

function chooseCandidate(id) {
  state.candidateId = id;
  for (const el of document.querySelectorAll("[data-candidate]")) {
    el.classList.toggle("selected", el.dataset.candidate === id);
  }
  renderCandidate();
}

function renderBars(values, targetValue) {
  const n = values.length;
  const yDomain = [0, Math.max(1e-9, ...values, targetValue) * 1.1];
  const xDomain = [0, n];
  const step = Math.max(1, Math.ceil(n / 12));
  const xTicks = Array.from({ length: n }, (_, i) => i).filter((i) => i % step === 0).map((i) => i + 0.5);
  const { x, y, g } = frame(xDomain, yDomain, "block", "sparsity", { xTicks: [] });
  const svg = svgRoot("per-block sparsity", "block-chart");
  svg.append(g);
  for (const t of xTicks) {
    svg.append(s("text", { class: "axes-text", x: x(t), y: H - M.bottom + 17, "text-anchor": "middle" }, String(t - 0.5)));
  }
  const bw = (x(1) - x(0)) * 0.8;
  values.forEach((v, i) => {
    svg.append(
      s(
        "rect",
        { class: "block-bar", x: x(i + 0.5) - bw / 2, y: y(v), width: bw, height: Math.max(0, y(0) - y(v)), "data-block": i },
        s("title", {}, `block ${i}: ${pct(v)}`),
      ),
    );
  });
  svg.append(
    s("line", { class: "target-line", x1: M.left, x2: W - M.right, y1: y(targetValue), y2: y(targetValue) }),
    s("text", { class: "target-label", x: W - M.right - 4, y: y(targetValue) - 5, "text-anchor": "end" }, `target ${pct(targetValue)}`),
  );
  return svg;
}

function isWanda(g) {
  // The all-identity genome is exactly Wanda's score (README: the meta metric).
  return g.f1 === "identity" && g.f2 === "identity" && g.alpha === "one" && g.beta === "one";
}

function renderCandidate() {
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
  fill(box,
    h(
      "div",
      { class: "title-row" },
      h("h3", {}, "Candidate"),
      c.recommended ? h("span", { class: "badge recommended" }, "recommended") : null,
      c.meets_target ? h("span", { class: "badge ok" }, "meets target") : h("span", { class: "badge warn" }, "misses target"),
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
      h("div", {}, h("h4", {}, `Per-block sparsity (${c.block_sparsity.length} blocks)`), renderBars(c.block_sparsity, target(search.request))),
    ),
    h("div", { id: "export", class: "export" }, exportView(c)),
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
    return h(
      "div",
      { class: "export-progress" },
      h("span", { id: "export-status" }, `Export ${ck ? ck.status : "requested"}… ${duration(elapsed)}`),
      progressBar(0, 1, { indeterminate: true }),
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
  );
}

async function startExport(candidateId) {
  const search = state.search;
  state.exports.set(candidateId, { checkpoint: null, started: Date.now(), error: null });
  renderCandidate();
  try {
    const ck = await api(`/api/searches/${search.id}/checkpoints`, { method: "POST", body: { candidate_id: candidateId } });
    state.exports.set(candidateId, { checkpoint: ck, started: Date.now(), error: null });
  } catch (err) {
    state.exports.set(candidateId, { checkpoint: null, started: Date.now(), error: err.message });
  }
  if (candidateId === state.candidateId) renderCandidate();
  schedule(1000);
}

async function pollExports() {
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

// ---------------------------------------------------------------------------------------------
// Routing and start-up

function route() {
  const m = /^#\/search\/([0-9a-fA-F-]{36})/.exec(location.hash);
  select(m ? m[1].toLowerCase() : null);
}

setupAuth();
setupForm();
window.addEventListener("hashchange", route);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refresh();
});
loadModels();
route();
refresh();
