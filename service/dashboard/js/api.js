// The public REST API: fetch with the API key, JSON bodies, and errors as ApiError messages.

const KEY_STORE = "optishear.apiKey";

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status; // 0: the API could not be reached
    this.body = body;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORE);
}

export function setApiKey(key) {
  sessionStorage.setItem(KEY_STORE, key);
}

export function forgetApiKey() {
  sessionStorage.removeItem(KEY_STORE);
}

// Called with a message on every 401; views/auth.js shows the key prompt.
let askForKey = () => {};

export function onKeyNeeded(fn) {
  askForKey = fn;
}

export async function api(path, { method = "GET", body, headers = {} } = {}) {
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

export async function readBody(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { detail: text.slice(0, 500) };
  }
}
