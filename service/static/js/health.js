// Health: the status body of `/ready` in words (readiness and why not, model, runtime, index, store).

import {fill, h, statusLine} from "./dom.js";
import {onStatus, refreshStatus} from "./status.js";

export function render(root) {
  const status = statusLine("health-status");
  const facts = h("dl", {class: "facts wide", "data-testid": "health-facts"});
  fill(root, h("h2", {}, "Health"), status.node, facts);

  function show(ready) {
    if (!ready) {
      status.error("the service does not answer /ready");
      return;
    }
    status.info(ready.ready ? "ready: the service can serve everything" : `not ready: ${ready.reasons.join("; ")}`);
    const index = ready.index || {};
    const rows = [
      ["ready", ready.ready ? "yes" : "no"],
      ["model version", ready.model_version ?? "–"],
      ["device", ready.device ?? "–"],
      ["precision", ready.precision ?? "–"],
      ["runtime", ready.runtime ?? "–"],
      ["gallery items", ready.store.items ?? "unknown"],
      ["index", index.kind ? `${index.backend} ${index.kind}, ${index.size} vectors of dimension ${index.dim}` : "–"],
      ["store", `${ready.store.backend}, ${ready.store.writable ? "writable" : `not writable: ${ready.store.error}`}`],
      ["queue depth", `${ready.queue_depth} images waiting for the model`],
      ["training", ready.training ? `job ${ready.training} running` : "no job running"],
    ];
    fill(facts, rows.map(([name, value]) => [h("dt", {}, name), h("dd", {}, String(value))]));
  }

  const unsubscribe = onStatus(show);
  refreshStatus();
  return unsubscribe;
}

