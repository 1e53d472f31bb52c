// Models: every registered version with its metrics, the serving one marked; activation (promotion by
// hand or rollback) after a confirmation, with the re-embedding progress of the activation job.

import {api} from "./api.js";
import {fill, fmt, h, jsonText, seconds, statusLine, when} from "./dom.js";
import {refreshStatus} from "./status.js";

const POLL_MS = 1000;

export function render(root) {
  const status = statusLine("models-status");
  const list = h("div", {"data-testid": "model-list"});
  let stopped = false;
  fill(root, h("h2", {}, "Models"), status.node, list);

  async function load() {
    try {
      const answer = await api("/models");
      fill(list, h("div", {class: "table-scroll"}, h("table", {class: "models"},
        h("thead", {}, h("tr", {}, ["version", "created", "validation metrics", "vectors", ""].map((t) => h("th", {}, t)))),
        h("tbody", {}, answer.models.map((model) => h("tr", {class: model.active ? "active" : null,
                                                              "data-testid": "model-row"},
          h("td", {}, h("code", {}, model.version), model.active ? h("span", {class: "badge ok"}, "active") : null),
          h("td", {}, when(model.created_at)),
          h("td", {}, metricsText(model.metrics)),
          h("td", {}, model.has_vectors ? "stored (instant)" : "to re-embed"),
          h("td", {}, model.active ? null : h("button", {type: "button", onclick: () => activate(model.version)},
                                              "Activate"))))))));
    } catch (err) {
      status.error(err);
    }
  }

  async function activate(version) {
    if (!confirm(`Serve model ${version}? The gallery is re-embedded where it lacks its vectors, then the `
                 + "service switches at once; the current model serves until then.")) return;
    try {
      const {job_id: jobId} = await api(`/models/${encodeURIComponent(version)}/activate`, {method: "POST"});
      for (;;) {
        const job = await api(`/models/activations/${jobId}`);
        status.info(`activation ${job.status}: ${job.reembedded} of ${job.to_reembed} re-embedded`
                    + (job.seconds ? ` in ${seconds(job.seconds)}` : "") + (job.error ? `: ${job.error}` : ""));
        if (job.status !== "running" || stopped) break;
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      }
    } catch (err) {
      status.error(err);
    }
    refreshStatus();
    load();
  }

  load();
  return () => { stopped = true; };
}

function metricsText(metrics) {
  const entries = Object.entries(metrics || {}).filter(([, value]) => typeof value === "number");
  if (!entries.length) return Object.keys(metrics || {}).length ? h("pre", {}, jsonText(metrics)) : "–";
  return entries.map(([key, value]) => `${key} ${fmt(value, 4)}`).join(", ");
}
