// The JSON API with the user's key: `X-API-Key` from session storage, errors as ApiError.

const KEY_STORAGE = "cgd-api-key";
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(`${status} ${code}: ${detail}`);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

/** `onAuthError(fn)`: fn(error) on every 401 or 403. */
export function onAuthError(fn) {
  listeners.add(fn);
}

async function send(path, {method = "GET", json, form, signal} = {}) {
  const headers = {};
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  let response;
  try {
    response = await fetch(path, {method, headers, body, signal, cache: "no-cache"});
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "unreachable", `the service did not answer (${err.message})`);
  }
  if (!response.ok && response.status !== 304) {
    let code = "http_error";
    let detail = response.statusText || "request failed";
    try {
      const error = await response.json();
      code = error.code || code;
      detail = typeof error.detail === "string" ? error.detail : JSON.stringify(error.detail);
    } catch {
      // not the service's JSON error body: keep the status text
    }
    const error = new ApiError(response.status, code, detail);
    if (response.status === 401 || response.status === 403) listeners.forEach((fn) => fn(error));
    throw error;
  }
  return response;
}

/** The JSON body of a request (null for 204). */
export async function api(path, options) {
  const response = await send(path, options);
  return response.status === 204 ? null : response.json();
}

/** An image of the API as an object URL (the key travels in a header, so <img src> cannot fetch it). */
export async function imageUrl(path, options) {
  const response = await send(path, options);
  return URL.createObjectURL(await response.blob());
}

/** `path?name=value...`, leaving out empty values. */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(name, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}
