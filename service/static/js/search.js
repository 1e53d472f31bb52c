// Search (the landing view): drop, paste or pick images, or search by a stored item; results as a grid.

import {api, withQuery} from "./api.js";
import {fill, h, statusLine} from "./dom.js";
import {itemCard, thumbnail} from "./items.js";

const DEFAULT_K = 12;
let lastQuery = null; // {files} or {similarTo}: re-run when the options change

export function render(root, args) {
  const status = statusLine("search-status");
  const results = h("section", {class: "results", "data-testid": "search-results", "aria-live": "polite"});
  const fileInput = h("input", {type: "file", accept: "image/*", multiple: true, id: "search-files",
                                "data-testid": "search-files", class: "visually-hidden"});
  const drop = h("label", {for: "search-files", class: "dropzone", tabindex: 0, "data-testid": "dropzone"},
    h("strong", {}, "Drop, paste or pick images"), h("span", {}, "one image, or several to search each"));
  const field = (label, input) => h("label", {}, label, input);
  const k = h("input", {type: "number", min: 1, value: DEFAULT_K, name: "k", "data-testid": "search-k"});
  const label = h("input", {type: "text", name: "label", list: "search-labels", placeholder: "any",
                            "data-testid": "search-label"});
  const labels = h("datalist", {id: "search-labels"});
  const metadata = h("input", {type: "text", name: "metadata", placeholder: '{"shop": "north"}',
                               "data-testid": "search-metadata"});
  const qeN = h("input", {type: "number", min: 0, max: 100, value: 0, name: "qe_n", "data-testid": "search-qe-n"});
  const qeAlpha = h("input", {type: "number", min: 0, max: 100, step: "any", value: 3, name: "qe_alpha"});
  const options = h("form", {class: "options", onsubmit: (event) => { event.preventDefault(); rerun(); }},
    field("k", k), field("label", label), labels, field("metadata (JSON)", metadata),
    field("query expansion: neighbours", qeN), field("query expansion: alpha", qeAlpha),
    h("button", {type: "submit"}, "Search again"));

  function params() {
    return {k: k.value, label: label.value.trim(), metadata: metadata.value.trim(), qe_n: qeN.value,
            qe_alpha: qeAlpha.value};
  }

  async function searchFiles(files) {
    lastQuery = {files};
    const p = params();
    const form = new FormData();
    const many = files.length > 1;
    files.forEach((file) => form.append(many ? "files" : "file", file, file.name));
    for (const [name, value] of Object.entries(p)) if (value !== "") form.append(name, value);
    status.info(`searching ${files.length} image${many ? "s" : ""}…`);
    try {
      const answer = await api(many ? "/search/batch" : "/search", {method: "POST", form});
      const lists = many ? answer.results : [answer.results];
      fill(results, ...lists.map((hits, i) => querySection(
        h("img", {class: "thumb", alt: `query ${files[i].name}`, src: URL.createObjectURL(files[i])}),
        `query: ${files[i].name}`, hits)));
      answered(answer);
    } catch (err) {
      fill(results);
      status.error(err);
    }
  }

  async function searchSimilar(itemId) {
    lastQuery = {similarTo: itemId};
    const p = params();
    status.info(`searching items similar to #${itemId}…`);
    try {
      const item = await api(`/gallery/${itemId}`);
      const answer = await api(withQuery(`/gallery/${itemId}/similar`, {k: p.k, label: p.label}));
      fill(results, querySection(thumbnail(item),
                                 `similar to item #${itemId} (${item.label ?? "no label"})`, answer.results));
      answered(answer, p.metadata || Number(p.qe_n) > 0
        ? " (the metadata filter and query expansion apply to uploaded images only)" : "");
    } catch (err) {
      fill(results);
      status.error(err);
    }
  }

  function answered(answer, note = "") {
    status.info(`answered by model ${answer.model_version} in ${answer.took_ms.toFixed(0)} ms${note}`);
  }

  function querySection(queryImage, caption, hits) {
    const grid = h("div", {class: "grid"}, hits.map((hit) => itemCard(hit, (item) => {
      location.hash = `#/search/similar/${item.id}`;
    }, "search by this item")));
    return h("article", {class: "query"},
      h("figure", {class: "query-image"}, queryImage, h("figcaption", {}, caption)),
      hits.length ? grid : h("p", {}, "no gallery item matches"));
  }

  function rerun() {
    if (lastQuery && lastQuery.files) searchFiles(lastQuery.files);
    else if (lastQuery && lastQuery.similarTo) searchSimilar(lastQuery.similarTo);
  }

  function take(fileList) {
    const files = [...fileList].filter((file) => file.size > 0 || file.type);
    if (files.length) searchFiles(files);
  }

  fileInput.addEventListener("change", () => take(fileInput.files));
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); fileInput.click(); }
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    take(event.dataTransfer.files);
  });
  const onPaste = (event) => {
    const files = [...event.clipboardData.items].filter((item) => item.kind === "file")
      .map((item) => item.getAsFile());
    if (files.length) take(files);
  };
  document.addEventListener("paste", onPaste);

  fill(root, h("h2", {}, "Search"), drop, fileInput, options, status.node, results);
  api("/gallery/labels").then((counts) => {
    fill(labels, counts.labels.map((entry) => h("option", {value: entry.label})));
  }).catch(() => {});
  if (args[0] === "similar" && args[1]) searchSimilar(Number(args[1]));
  else lastQuery = null;
  return () => document.removeEventListener("paste", onPaste);
}
