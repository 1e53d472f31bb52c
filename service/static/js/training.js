// Training: the POST /train form generated from the OpenAPI schema, the job list, and a job's live
// progress, loss and validation curves, old vs new metrics, and cancel.

import {api, withQuery} from "./api.js";
import {fill, fmt, h, jsonText, seconds, statusLine, when} from "./dom.js";
import {lineChart} from "./chart.js";
import {requestSchema, schemaForm} from "./schema_form.js";
import {refreshStatus} from "./status.js";

const POLL_MS = 1500;
const ACTIVE = new Set(["queued", "running"]);
const METRICS = [["map@r", "MAP@R"], ["recall@1", "R@1"]];

export function render(root, args) {
  const status = statusLine("train-status");
  const formArea = h("div", {}, "loading the form…");
  const jobList = h("div", {"data-testid": "job-list"});
  const detail = h("section", {class: "job", "data-testid": "job-detail"});
  let selected = args[0] || null;
  let timer = null;
  let stopped = false;
  let lastFinished = null;

  fill(root, h("h2", {}, "Training"),
    h("div", {class: "columns"},
      h("section", {}, h("h3", {}, "Start a fine-tuning job"), formArea, status.node),
      h("section", {}, h("h3", {}, "Jobs"), jobList)),
    detail);

  api("/openapi.json").then((openapi) => {
    const form = schemaForm(requestSchema(openapi, "/train", "post"), openapi.components.schemas);
    const submit = async (event) => {
      event.preventDefault();
      status.info("submitting…");
      try {
        const accepted = await api("/train", {method: "POST", json: form.values()});
        status.info(`job ${accepted.job_id} accepted: its progress is below`);
        selected = accepted.job_id;
        history.replaceState(null, "", `#/training/${selected}`);
        poll();
      } catch (err) {
        status.error(err);
      }
    };
    fill(formArea, h("form", {class: "train-form", onsubmit: submit, "data-testid": "train-form"},
      form.node, h("button", {type: "submit", "data-testid": "train-submit"}, "Start training")));
  }).catch((err) => status.error(err));

  async function poll() {
    clearTimeout(timer);
    if (stopped) return;
    let active = false;
    try {
      const {jobs} = await api(withQuery("/train", {limit: 20}));
      fill(jobList, jobsTable(jobs, (id) => {
        selected = id;
        history.replaceState(null, "", `#/training/${id}`);
        poll();
      }, selected));
      if (!selected && jobs.length) selected = jobs[0].id;
      active = jobs.some((job) => ACTIVE.has(job.status));
      if (selected) {
        const job = await api(`/train/${selected}`);
        fill(detail, jobView(job, async () => {
          try {
            await api(`/train/${job.id}/cancel`, {method: "POST"});
          } catch (err) {
            status.error(err);
          }
          poll();
        }));
        if (!ACTIVE.has(job.status) && lastFinished !== job.id) {
          lastFinished = job.id;
          refreshStatus(); // a promoted model serves now: the header shows it without a reload
        }
      }
    } catch (err) {
      status.error(err);
    }
    if (!stopped) timer = setTimeout(poll, active ? POLL_MS : POLL_MS * 4);
  }

  poll();
  return () => { stopped = true; clearTimeout(timer); };
}

function jobsTable(jobs, onSelect, selected) {
  if (!jobs.length) return h("p", {}, "no job yet");
  return h("div", {class: "table-scroll"}, h("table", {class: "jobs"},
    h("thead", {}, h("tr", {}, ["job", "status", "created", "model", "promoted"].map((t) => h("th", {}, t)))),
    h("tbody", {}, jobs.map((job) => h("tr", {class: job.id === selected ? "selected" : null},
      h("td", {}, h("button", {type: "button", class: "link", onclick: () => onSelect(job.id)}, job.id)),
      h("td", {class: `job-status ${job.status}`}, job.status),
      h("td", {}, when(job.created_at)),
      h("td", {}, h("code", {}, job.model_version ?? "–")),
      h("td", {}, job.promoted === null ? "–" : job.promoted ? "yes" : "no"))))));
}

function bar(value, max, testid) {
  return h("progress", {value: value ?? 0, max: max || 1, "data-testid": testid});
}

function jobView(job, onCancel) {
  const p = job.progress || {};
  const facts = [
    ["status", h("span", {class: `job-status ${job.status}`, "data-testid": "job-status"}, job.status)],
    ["phase", h("span", {"data-testid": "job-phase"}, p.phase ?? "–")],
    ["epoch", `${fmt(p.epoch)} of ${fmt(p.epochs)}`],
    ["step", h("span", {}, `${fmt(p.step)} of ${fmt(p.steps)} `, bar(p.step, p.steps, "job-steps"))],
    ["loss", fmt(p.loss, 4)],
    ["learning rate", p.lr ? p.lr.toExponential(2) : "–"],
    ["images/s", fmt(p.images_per_s, 1)],
    ["ETA", ACTIVE.has(job.status) ? seconds(p.eta_s) : "–"],
  ];
  if (p.to_reembed) {
    facts.push(["re-embedded", h("span", {}, `${p.reembedded} of ${p.to_reembed} `,
                                 bar(p.reembedded, p.to_reembed, "job-reembedding"))]);
  }
  facts.push(["training time", seconds(job.training_seconds)], ["re-embedding time", seconds(job.reembedding_seconds)],
             ["model version", h("code", {"data-testid": "job-model-version"}, job.model_version ?? "–")],
             ["promoted", job.promoted === null ? "–" : job.promoted ? "yes" : "no"]);
  const epochs = job.history || [];
  const baseline = job.baseline_metrics || {};
  const charts = h("div", {class: "charts"},
    lineChart({title: "training loss", xLabel: "epoch", testid: "loss-chart",
               series: [{name: "loss", points: epochs.map((e) => [e.epoch, e.loss])}]}),
    lineChart({title: "validation", xLabel: "epoch", testid: "validation-chart",
               series: METRICS.map(([key, name]) => ({name, points: epochs.map((e) => [e.epoch, e.val[key]])})),
               references: METRICS.map(([key, name]) => ({name: `serving model ${name}`, y: baseline[key]}))}));
  return h("div", {},
    h("h3", {}, `Job ${job.id}`),
    h("div", {class: "columns"},
      h("dl", {class: "facts"}, facts.map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)])),
      h("div", {},
        metricsTable(job),
        job.message ? h("p", {class: "message", "data-testid": "job-message"}, job.message) : null,
        job.error ? h("p", {class: "status error", "data-testid": "job-error"}, job.error) : null,
        ACTIVE.has(job.status)
          ? h("button", {type: "button", class: "danger", onclick: onCancel, "data-testid": "job-cancel"}, "Cancel")
          : null)),
    charts,
    h("details", {}, h("summary", {}, "parameters and recipe"),
      h("pre", {}, jsonText({params: job.params, recipe: job.recipe}))));
}

function metricsTable(job) {
  const old = job.baseline_metrics;
  const fresh = job.new_metrics;
  if (!old && !fresh) return h("p", {}, "validation metrics: when training ends");
  const keys = [...new Set([...Object.keys(old || {}), ...Object.keys(fresh || {})])].sort();
  return h("div", {class: "table-scroll"}, h("table", {class: "metrics", "data-testid": "job-metrics"},
    h("thead", {}, h("tr", {}, h("th", {}, "validation"), h("th", {}, "serving model"), h("th", {}, "trained"))),
    h("tbody", {}, keys.map((key) => h("tr", {},
      h("th", {}, key), h("td", {}, fmt(old?.[key], 4)), h("td", {}, fmt(fresh?.[key], 4)))))));
}
