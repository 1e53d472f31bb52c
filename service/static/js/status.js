// The header's readiness badge and model version (from `/ready`, which is public), and the notice line.

export const READY_POLL_MS = 3000;
const listeners = new Set();

export function showNotice(text) {
  const notice = document.getElementById("notice");
  notice.textContent = text;
  notice.hidden = !text;
}

/** `onStatus(fn)`: fn(status) after every refresh (views that show the model version follow it). */
export function onStatus(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** The header: readiness and the serving model version, from `/ready` (public). */
export async function refreshStatus() {
  const badge = document.getElementById("ready-badge");
  const version = document.getElementById("model-version");
  try {
    const response = await fetch("/ready", {cache: "no-cache"});
    const status = await response.json();
    badge.textContent = status.ready ? "ready" : "not ready";
    badge.className = status.ready ? "badge ok" : "badge bad";
    badge.title = status.reasons.join("; ");
    version.textContent = status.model_version ?? "–";
    listeners.forEach((fn) => fn(status));
    return status;
  } catch {
    badge.textContent = "unreachable";
    badge.className = "badge bad";
    listeners.forEach((fn) => fn(null));
    return null;
  }
}

