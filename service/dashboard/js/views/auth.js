// The connection badge, the error banner and the API key prompt.

import { apiKey, forgetApiKey, onKeyNeeded, setApiKey } from "../api.js";
import { $ } from "../dom.js";

export function setBanner(message, kind = "error") {
  const el = $("#banner");
  el.hidden = !message;
  el.className = `banner ${kind}`;
  el.textContent = message ?? "";
}

export function setConnection(ok) {
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

function updateKeyButton() {
  const btn = $("#key-button");
  btn.hidden = !apiKey();
  btn.textContent = "Forget API key";
}

/** Wire the key form; onKey runs once a key was entered (reload what the API refused). */
export function setupAuth(onKey) {
  onKeyNeeded(askForKey);
  $("#auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("#auth-key").value.trim();
    if (!key) return;
    setApiKey(key);
    $("#auth-key").value = "";
    $("#auth").hidden = true;
    $("#main").classList.remove("locked");
    updateKeyButton();
    onKey();
  });
  $("#key-button").addEventListener("click", () => {
    forgetApiKey();
    updateKeyButton();
    askForKey("The key was forgotten. Enter a key to continue.");
  });
  updateKeyButton();
}
