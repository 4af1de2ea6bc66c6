// The submit form: sends only the fields filled in, shows the API's messages verbatim.

import { api } from "../api.js";
import { $, fill, h } from "../dom.js";
import { refresh, state } from "../state.js";

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
