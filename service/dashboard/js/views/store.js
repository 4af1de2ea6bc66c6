// The checkpoint store: its size in the header (GET /api/stats), and deleting a finished
// search or a checkpoint (DELETE /api/searches/{id}, DELETE /api/checkpoints/{id}).

import { api } from "../api.js";
import { $, h } from "../dom.js";
import { bytes } from "../format.js";
import { ACTIVE, refresh, state } from "../state.js";
import { setBanner } from "./auth.js";

const STATS_EVERY_MS = 15000; // the store changes with exports and deletes, not every poll
let statsAt = 0;

/** Refresh the header's store size, at most every STATS_EVERY_MS (force: now). */
export async function loadStoreSize({ force = false } = {}) {
  if (!force && Date.now() - statsAt < STATS_EVERY_MS) return;
  statsAt = Date.now();
  const el = $("#store-size");
  try {
    const stats = await api("/api/stats");
    const s = stats.store;
    const n = stats.checkpoints.succeeded;
    const limits = [
      stats.retention.keep_checkpoints ? `keeps the newest ${stats.retention.keep_checkpoints}` : null,
      stats.retention.store_max_bytes ? `at most ${bytes(stats.retention.store_max_bytes)}` : null,
    ].filter(Boolean);
    el.textContent = `store ${bytes(s.disk_bytes)}`;
    el.dataset.bytes = String(s.disk_bytes);
    el.title =
      `${stats.scope === "all" ? "The checkpoint store" : "Your checkpoints"}: ${bytes(s.disk_bytes)} on disk, ` +
      `${s.archives} archive${s.archives === 1 ? "" : "s"}${s.compact_archives ? ` (+${s.compact_archives} compact)` : ""}, ` +
      `${n} succeeded checkpoint${n === 1 ? "" : "s"}. Retention: ${limits.length ? limits.join(", ") : "off"}.`;
    el.hidden = false;
  } catch (err) {
    if (err.status === 0 || err.status === 401) throw err;
    el.hidden = true; // an older API without /api/stats: say nothing
  }
}

/** A Delete button for a finished search (null while it is queued or running). */
export function deleteSearchButton(search) {
  if (ACTIVE.has(search.status)) return null;
  return h("button", { class: "secondary danger", type: "button", id: "delete-search", onclick: () => deleteSearch(search) }, "Delete");
}

async function deleteSearch(search) {
  const n = state.checkpoints.length;
  const size = state.checkpoints.reduce((sum, c) => sum + (c.size_bytes ?? 0), 0);
  const what = n ? ` and its ${n} checkpoint${n === 1 ? "" : "s"} (${bytes(size)})` : "";
  if (!window.confirm(`Delete search ${search.id}${what}? This cannot be undone.`)) return;
  try {
    await api(`/api/searches/${search.id}`, { method: "DELETE" });
  } catch (err) {
    if (err.status !== 401) setBanner(err.message);
    return;
  }
  for (const c of state.checkpoints) state.exports.delete(c.candidate_id);
  statsAt = 0;
  location.hash = "#/"; // the route shows no search; the next poll lists the rest
  refresh();
}

/** A Delete button for a finished export (null while it is queued or running). */
export function deleteCheckpointButton(ck) {
  if (ACTIVE.has(ck.status)) return null;
  return h(
    "button",
    {
      class: "link-button danger delete-checkpoint",
      type: "button",
      title: `delete checkpoint ${ck.id} and its archive`,
      onclick: (ev) => {
        ev.stopPropagation(); // the row's own click chooses its candidate
        deleteCheckpoint(ck);
      },
    },
    "Delete",
  );
}

async function deleteCheckpoint(ck) {
  const size = ck.size_bytes ? ` (${bytes(ck.size_bytes)})` : "";
  if (!window.confirm(`Delete checkpoint ${ck.id} of ${ck.candidate_key}${size}? This cannot be undone.`)) return;
  try {
    await api(`/api/checkpoints/${ck.id}`, { method: "DELETE" });
  } catch (err) {
    if (err.status !== 401) setBanner(err.message);
    return;
  }
  if (state.exports.get(ck.candidate_id)?.checkpoint?.id === ck.id) state.exports.delete(ck.candidate_id);
  state.exportsVersion += 1; // reload the search's list of exports
  statsAt = 0;
  refresh();
}
