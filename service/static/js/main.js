// The console: a router over the views, the header's health badge and the API-key dialog.

import {apiKey, onAuthError, setApiKey} from "./api.js";
import {fill} from "./dom.js";
import {releaseImages} from "./items.js";
import * as gallery from "./gallery.js";
import * as health from "./health.js";
import * as models from "./models.js";
import * as search from "./search.js";
import * as training from "./training.js";
import {READY_POLL_MS, refreshStatus, showNotice} from "./status.js";

const VIEWS = {search, gallery, training, models, health};
const view = document.getElementById("view");
const keyDialog = document.getElementById("key-dialog");
let cleanup = null;

function route() {
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  return {name: VIEWS[name] ? name : "search", args: rest.map(decodeURIComponent)};
}

function render() {
  if (cleanup) cleanup();
  cleanup = null;
  releaseImages();
  showNotice("");
  const {name, args} = route();
  document.querySelectorAll("nav a").forEach((link) => {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  });
  fill(view);
  cleanup = VIEWS[name].render(view, args) || null;
}

function openKeyDialog(reason) {
  document.getElementById("key-reason").textContent = reason
    || "This service may require an API key (X-API-Key).";
  document.getElementById("key-input").value = apiKey() || "";
  if (!keyDialog.open) keyDialog.showModal();
}

keyDialog.addEventListener("close", () => {
  if (keyDialog.returnValue === "save") setApiKey(document.getElementById("key-input").value.trim());
  else if (keyDialog.returnValue === "forget") setApiKey(null);
  else return;
  updateKeyButton();
  render();
});

function updateKeyButton() {
  document.getElementById("key-button").textContent = apiKey() ? "API key (set)" : "API key";
}

onAuthError((error) => {
  if (error.status === 401) {
    showNotice(`This service needs an API key for this: ${error.detail}. Enter it with "API key".`);
    openKeyDialog("This service needs an API key: enter it to continue.");
  } else {
    showNotice(`The API key does not grant this operation (${error.detail}). Enter another with "API key".`);
  }
});

document.getElementById("key-button").addEventListener("click", () => openKeyDialog());
window.addEventListener("hashchange", render);
updateKeyButton();
render();
refreshStatus();
setInterval(refreshStatus, READY_POLL_MS);
