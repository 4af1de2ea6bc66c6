// What the page knows between polls, and the one way to ask for a fresh poll.

export const FAST_POLL_MS = 2000; // while a search or an export is queued or running
export const IDLE_POLL_MS = 15000; // otherwise: catches searches submitted elsewhere
export const OFFLINE_POLL_MS = 5000;
export const ACTIVE = new Set(["queued", "running"]);

export const state = {
  searches: [],
  total: 0,
  selectedId: null,
  search: null,
  generations: [],
  front: null,
  population: null, // the shown generation's whole population (GET .../candidates)
  checkpoints: [], // the selected search's exports (GET .../checkpoints), oldest first
  checkpointsFor: null, // "<id>:<exports version>" of the loaded exports
  frontGeneration: "", // "" = default: the final front when finished, else the latest
  loadedFor: null, // "<id>:<generations done>:<status>:<front generation>" of the loaded charts
  candidateId: null,
  exports: new Map(), // candidate id -> {checkpoint, started, error}
  exportsVersion: 0, // bumped when an export is requested or finishes: reload the list
  timer: null,
  running: false,
  again: false,
  idempotencyKey: null,
};

// main.js installs the polling loop; views call refresh() or schedule() without importing it.
let poll = () => {};

export function setPoll(fn) {
  poll = fn;
}

export function refresh() {
  return poll();
}

export function schedule(ms) {
  clearTimeout(state.timer);
  state.timer = setTimeout(refresh, ms);
}
