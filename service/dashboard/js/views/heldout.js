// The gain in the unit users compare models by: held-out perplexity of the searched model
// beside Wanda's and SparseGPT's (and OWL+SparseGPT's at an unstructured target), as the API
// reports it (the page computes no figure itself but the bar lengths).

import { h, s } from "../dom.js";
import { fmt, pct } from "../format.js";

const NAMES = {
  dense: "dense",
  searched: "searched (shipped)",
  wanda: "Wanda",
  sparsegpt: "SparseGPT",
  "owl+sparsegpt": "OWL+SparseGPT",
};

function gainText(gain, name, error) {
  const sign = gain > 0 ? "+" : gain < 0 ? "−" : "±";
  // the standard error over the windows, when the comparison carries them
  const spread = error == null ? "" : ` ± ${(error * 100).toFixed(1)}%`;
  return `${sign}${Math.abs(gain * 100).toFixed(1)}%${spread} vs ${NAMES[name] ?? name}`;
}

/** Horizontal bars of perplexity, one per model, shortest best. */
function bars(rows) {
  const width = 320;
  const rowH = 22;
  const label = 130;
  const max = Math.max(...rows.map((r) => r.perplexity));
  return s(
    "svg",
    { class: "heldout-bars", viewBox: `0 0 ${width} ${rows.length * rowH}`, role: "img", "aria-label": "held-out perplexity per model" },
    rows.map((r, i) => {
      const w = ((width - label - 50) * r.perplexity) / max;
      return s(
        "g",
        { transform: `translate(0 ${i * rowH})` },
        s("text", { x: 0, y: 15, class: "bar-label" }, NAMES[r.name] ?? r.name),
        s("rect", { x: label, y: 4, width: Math.max(1, w), height: rowH - 8, class: `bar-${r.name}` }),
        s("text", { x: label + w + 4, y: 15, class: "bar-value" }, fmt(r.perplexity)),
      );
    }),
  );
}

/** The held-out comparison card of a succeeded search, or null when it has none. */
export function heldOutCard(search) {
  const cmp = search.result?.held_out;
  if (!cmp) {
    if (search.status !== "succeeded") return null;
    return h(
      "p",
      { class: "muted small", id: "heldout-missing" },
      "No held-out comparison with Wanda and SparseGPT: submit with compare_baselines (on by default in `optishear run`).",
    );
  }
  const p = cmp.protocol;
  const gains = Object.entries(cmp.gains ?? {});
  return h(
    "section",
    { class: "heldout", id: "heldout" },
    h("h3", {}, "Held-out perplexity, measured in the search's run"),
    h(
      "div",
      { class: "gains" },
      // Within 0.05% either way it is a tie: the windows' own noise is larger (bench/RESULTS.md).
      gains.map(([name, g]) => h("span", { class: `gain ${Math.abs(g) < 5e-4 ? "tie" : g < 0 ? "better" : "worse"}`, "data-baseline": name }, gainText(g, name, cmp.gain_errors?.[name]))),
    ),
    h(
      "div",
      { class: "heldout-body" },
      bars(cmp.rows),
      h(
        "table",
        { class: "measure-table", id: "heldout-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "model"), h("th", { class: "num" }, "perplexity"), h("th", { class: "num" }, "sparsity"))),
        h(
          "tbody",
          {},
          cmp.rows.map((r) =>
            h(
              "tr",
              { "data-model": r.name, class: r.name === "searched" ? "selected" : null },
              h("td", {}, NAMES[r.name] ?? r.name),
              h("td", { class: "num" }, fmt(r.perplexity)),
              h("td", { class: "num" }, r.name === "dense" ? "–" : pct(r.sparsity)),
            ),
          ),
        ),
      ),
    ),
    h(
      "p",
      { class: "muted small" },
      `Protocol: ${p.eval_windows} windows of ${p.eval_seq_len} tokens of ${p.eval_text} (${p.eval_tokens} predicted tokens); `,
      `every model pruned at ${pct(p.target)} ${p.pattern} from the same ${p.calibration_samples} × ${p.calibration_seq_len} calibration tokens of ${p.calibration_source} (seed ${p.calibration_seed})`,
      p.searched_refit ? "; the searched model is shipped refit." : ".",
    ),
  );
}
