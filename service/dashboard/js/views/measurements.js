// Measurements of an exported checkpoint: downstream task accuracy (lm-evaluation-harness)
// and speed against the dense model, queued on the API and shown as it stores them.

import { api } from "../api.js";
import { fill, h } from "../dom.js";
import { fmt } from "../format.js";
import { ACTIVE } from "../state.js";
import { setBanner } from "./auth.js";

// The zero-shot set pruning papers report (Wanda, SparseGPT); task data comes from the hub.
const PAPER_TASKS = "boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa";
const POLL_MS = 2000;

const timers = new Map(); // checkpoint id -> pending poll

/** The measurements panel of a succeeded checkpoint; it loads and polls itself. */
export function measurementsPanel(ck) {
  const box = h("div", { class: "measurements", id: "measurements", "data-checkpoint": ck.id });
  const tasks = h("input", { id: "tasks-input", name: "tasks", value: PAPER_TASKS, "aria-label": "lm-eval tasks" });
  const limit = h("input", { id: "tasks-limit", name: "limit", inputmode: "numeric", placeholder: "all", "aria-label": "examples per task" });
  const prompt = h("input", { id: "speed-prompt", name: "prompt_len", inputmode: "numeric", placeholder: "128", "aria-label": "prompt tokens" });
  const list = h("div", { id: "measurement-list" });
  const ask = async (body) => {
    try {
      await api(`/api/checkpoints/${ck.id}/measurements`, { method: "POST", body });
    } catch (err) {
      if (err.status !== 401) setBanner(err.message);
    }
    load(ck.id, list);
  };
  box.append(
    h("h4", {}, "Downstream tasks and speed"),
    h(
      "form",
      {
        class: "row measure-form",
        onsubmit: (ev) => {
          ev.preventDefault();
          const names = tasks.value.split(",").map((t) => t.trim()).filter(Boolean);
          const n = limit.value.trim();
          ask({ kind: "tasks", tasks: names, ...(n ? { limit: Number(n) } : {}) });
        },
      },
      h("label", {}, "Tasks ", tasks),
      h("label", {}, "Limit ", limit),
      h("button", { type: "submit", id: "measure-tasks" }, "Measure tasks"),
      h("label", {}, "Prompt ", prompt),
      h(
        "button",
        {
          type: "button",
          id: "measure-speed",
          class: "secondary",
          onclick: () => {
            const n = prompt.value.trim();
            ask({ kind: "speed", ...(n ? { prompt_len: Number(n) } : {}) });
          },
        },
        "Measure speed",
      ),
    ),
    list,
  );
  load(ck.id, list);
  return box;
}

async function load(checkpointId, list) {
  clearTimeout(timers.get(checkpointId));
  let rows;
  try {
    rows = await api(`/api/checkpoints/${checkpointId}/measurements`);
  } catch (err) {
    if (err.status !== 401) fill(list, h("p", { class: "error" }, err.message));
    return;
  }
  if (!list.isConnected && list.dataset.shown) return; // the panel was replaced meanwhile
  list.dataset.shown = "1";
  fill(list, rows.length ? rows.map(measurementView) : h("p", { class: "muted small" }, "No measurement yet."));
  if (rows.some((m) => ACTIVE.has(m.status))) {
    timers.set(checkpointId, setTimeout(() => list.isConnected && load(checkpointId, list), POLL_MS));
  }
}

function measurementView(m) {
  const head = h("div", { class: "title-row" }, h("strong", {}, m.kind === "tasks" ? `Tasks: ${m.request.tasks.join(", ")}` : "Speed"), h("span", { class: `badge ${m.status}` }, m.status));
  if (m.status === "failed") return h("div", { class: "measurement", "data-measurement": m.id, "data-kind": m.kind }, head, h("div", { class: "error" }, m.error ?? "no reason recorded"));
  if (m.status !== "succeeded") return h("div", { class: "measurement", "data-measurement": m.id, "data-kind": m.kind }, head, h("p", { class: "muted small" }, "Waiting for a runner…"));
  return h("div", { class: "measurement", "data-measurement": m.id, "data-kind": m.kind }, head, m.kind === "tasks" ? tasksTable(m.result) : speedTable(m.result));
}

function tasksTable(r) {
  return [
    h(
      "table",
      { class: "measure-table tasks-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "task"), h("th", {}, "metric"), h("th", { class: "num" }, "value"), h("th", { class: "num" }, "± stderr"), h("th", { class: "num" }, "examples"))),
      h(
        "tbody",
        {},
        r.scores.map((s) =>
          h(
            "tr",
            { "data-task": s.task, "data-metric": s.metric },
            h("td", {}, s.task),
            h("td", {}, s.metric),
            h("td", { class: "num" }, fmt(s.value)),
            h("td", { class: "num" }, s.stderr == null ? "–" : fmt(s.stderr)),
            h("td", { class: "num" }, String(s.n_samples)),
          ),
        ),
      ),
    ),
    h("p", { class: "muted small" }, `${r.num_fewshot}-shot${r.limit ? `, at most ${r.limit} examples a task` : ""}; lm-eval ${r.lm_eval_version}, ${Math.round(r.seconds)} s.`),
  ];
}

function speedTable(r) {
  const ratio = new Map(r.ratios.map((x) => [x.batch_size, x]));
  return [
    h(
      "table",
      { class: "measure-table speed-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "model"), h("th", {}, "kernel"), h("th", { class: "num" }, "batch"), h("th", { class: "num" }, "prefill ms"), h("th", { class: "num" }, "decode ms/token"), h("th", { class: "num" }, "decode tok/s"))),
      h(
        "tbody",
        {},
        r.rows.map((row) =>
          h(
            "tr",
            { "data-variant": row.variant, "data-batch": row.batch_size },
            h("td", {}, row.variant),
            h("td", {}, row.kernel),
            h("td", { class: "num" }, String(row.batch_size)),
            h("td", { class: "num" }, fmt(row.prefill_ms)),
            h("td", { class: "num" }, fmt(row.decode_ms_per_token)),
            h("td", { class: "num" }, fmt(row.decode_tokens_per_s)),
          ),
        ),
      ),
    ),
    h(
      "p",
      { class: "muted small" },
      [...ratio.values()].map((x) => `batch ${x.batch_size}: prefill ${x.prefill_verdict}, decode ${x.decode_verdict}`).join("; "),
    ),
    h("p", { class: "muted small kernel-note" }, `${r.device}, ${r.dtype}. ${r.kernel_note}`),
  ];
}
