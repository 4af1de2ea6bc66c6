// OptiShear dashboard, loaded by index.html as an ES module (no dependencies, no build step).
// It reads only the public REST API (/api/...), polls while anything is queued or running, and
// draws its charts as plain SVG. Text from the API is always inserted as text, never as markup.
//
//   api.js      fetch, ApiError, the API key        state.js   page state, refresh/schedule
//   dom.js      element helpers                     format.js  numbers, times, names
//   charts.js   SVG charts                          views/     auth, list, form, search, candidate,
//                                                              store (size, deletes), ...

import { api } from "./api.js";
import { ACTIVE, FAST_POLL_MS, IDLE_POLL_MS, OFFLINE_POLL_MS, refresh, schedule, setPoll, state } from "./state.js";
import { setBanner, setConnection, setupAuth } from "./views/auth.js";
import { pollExports } from "./views/candidate.js";
import { loadModels, setupForm } from "./views/form.js";
import { renderList } from "./views/list.js";
import { loadSelected, select } from "./views/search.js";
import { loadStoreSize } from "./views/store.js";

// Polling: one loop for the list, the selected search, exports in progress and the store size.
let storeSizeFor = -1; // the exports version the store size was read for
async function poll() {
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
    await loadStoreSize({ force: state.exportsVersion !== storeSizeFor }); // an export ended
    storeSizeFor = state.exportsVersion;
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

// Routing: #/search/<id> selects a search; anything else shows none.
function route() {
  const m = /^#\/search\/([0-9a-fA-F-]{36})/.exec(location.hash);
  select(m ? m[1].toLowerCase() : null);
}

setPoll(poll);
setupAuth(() => {
  loadModels();
  refresh();
});
setupForm();
window.addEventListener("hashchange", route);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refresh();
});
loadModels();
route();
refresh();
