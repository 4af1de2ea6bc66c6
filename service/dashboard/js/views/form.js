// The submit form: sends only the fields filled in, shows the API's messages verbatim.

import { api } from "../api.js";
import { $, fill, h } from "../dom.js";
import { refresh, state } from "../state.js";

const TEXT_FIELDS = new Set([
  "model",
  "pattern",
  "stages",
  "objective",
  "calibration.source",
  "evaluation.text",
  "allocation.granularity",
  "allocation.selection",
  "allocation.database",
  "metric_space",
  "screen.rungs",
]);
const LIST_FIELDS = new Set(["low_fidelity_samples"]); // "2,4" goes as [2, 4]

function parse(name, raw) {
  // Numbers go as numbers; anything else is sent as typed, so the API explains what is wrong.
  return TEXT_FIELDS.has(name) || raw === "" || Number.isNaN(Number(raw)) ? raw : Number(raw);
}

function put(body, name, value) {
  const path = name.split(".");
  let obj = body;
  for (const part of path.slice(0, -1)) obj = obj[part] ??= {};
  obj[path.at(-1)] = value;
}

function formBody(form) {
  const body = {};
  const pairs = {}; // two inputs, one field: allocation.front = [low, high]
  for (const el of form.elements) {
    if (el.type === "checkbox") {
      if (el.name && el.checked) put(body, el.name, true); // unchecked: the default
      continue;
    }
    const raw = (el.value ?? "").trim();
    if (raw === "") continue;
    if (el.dataset.pair) {
      (pairs[el.dataset.pair] ??= [null, null])[Number(el.dataset.index)] = parse(el.dataset.pair, raw);
    } else if (el.name) {
      const list = LIST_FIELDS.has(el.name) && raw.includes(",");
      put(body, el.name, list ? raw.split(",").map((part) => parse(el.name, part.trim())) : parse(el.name, raw));
    }
  }
  for (const [name, pair] of Object.entries(pairs)) put(body, name, pair);
  return body;
}

function fieldsNamed(form, name) {
  const field = form.elements.namedItem(name);
  return field ? [field] : [...form.querySelectorAll(`[data-pair="${CSS.escape(name)}"]`)];
}

function randomKey() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** The model names the API knows, offered as the form's suggestions. */
export async function loadModels() {
  try {
    const models = await api("/api/models");
    fill($("#models"),
      ...models.map((m) => h("option", { value: m.name }, `${m.description}${m.cached ? "" : " (not cached yet)"}`)),
    );
  } catch {
    // The list is a convenience; polling reports connection problems.
  }
}

export function setupForm() {
  const form = $("#search-form");
  form.addEventListener("input", () => {
    state.idempotencyKey = null; // a changed body is a new search, not a retry
  });
  form.elements.namedItem("stages").addEventListener("change", (ev) => {
    if (ev.target.value === "allocation") $("#allocation-settings").open = true;
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
        for (const field of name ? fieldsNamed(form, name) : []) field.setAttribute("aria-invalid", "true");
      }
    } finally {
      button.disabled = false;
      button.textContent = "Submit search";
    }
  });
}
