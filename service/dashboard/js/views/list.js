// The list of searches in the sidebar.

import { $, badge, fill, h, progressBar } from "../dom.js";
import { ago, fmt, modelLabel, pct, target } from "../format.js";
import { state } from "../state.js";

export function renderList() {
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
