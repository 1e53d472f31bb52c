// Gallery: paged browse with a label filter and counts, an item view (image, metadata, label, delete),
// and adding images with labels in all-or-nothing batches, with a progress bar and a report per batch.

import {api, withQuery} from "./api.js";
import {fill, h, jsonText, statusLine, when} from "./dom.js";
import {apiImage, itemCard, noImage} from "./items.js";

const PAGE_SIZE = 24;
const BATCH_FILES = 16;
const BATCH_BYTES = 32 * 1024 * 1024; // well under the service's request limit

export function render(root, args) {
  if (args[0] === "item" && args[1]) return renderItem(root, Number(args[1]));
  const state = {offset: 0, label: ""};
  const status = statusLine("gallery-status");
  const filter = h("select", {"data-testid": "gallery-filter", "aria-label": "label filter"});
  const counts = h("p", {class: "counts", "data-testid": "gallery-counts"});
  const grid = h("div", {class: "grid", "data-testid": "gallery-grid"});
  const pageInfo = h("span", {"data-testid": "gallery-page"});
  const prev = h("button", {type: "button", onclick: () => { state.offset -= PAGE_SIZE; load(); }}, "Previous");
  const next = h("button", {type: "button", onclick: () => { state.offset += PAGE_SIZE; load(); }}, "Next");
  filter.addEventListener("change", () => { state.label = filter.value; state.offset = 0; load(); });

  async function loadLabels() {
    const answer = await api("/gallery/labels");
    const total = answer.labels.reduce((sum, entry) => sum + entry.count, 0) + answer.unlabelled;
    fill(filter, h("option", {value: ""}, `all labels (${total})`),
         answer.labels.map((entry) => h("option", {value: entry.label}, `${entry.label} (${entry.count})`)));
    filter.value = state.label;
    fill(counts, `${total} items, ${answer.labels.length} labels, ${answer.unlabelled} without a label`);
  }

  async function load() {
    try {
      const page = await api(withQuery("/gallery", {offset: Math.max(0, state.offset), limit: PAGE_SIZE,
                                                    label: state.label}));
      state.offset = page.offset;
      fill(grid, page.items.map((item) => itemCard(item, (chosen) => {
        location.hash = `#/gallery/item/${chosen.id}`;
      }, "open this item")));
      const last = Math.min(page.offset + page.items.length, page.total);
      pageInfo.textContent = page.total ? `items ${page.offset + 1}–${last} of ${page.total}` : "no items";
      prev.disabled = page.offset === 0;
      next.disabled = last >= page.total;
      status.clear();
    } catch (err) {
      status.error(err);
    }
  }

  async function refresh() {
    try {
      await loadLabels();
    } catch (err) {
      status.error(err);
      return;
    }
    await load();
  }

  fill(root, h("h2", {}, "Gallery"), addForm(refresh),
    h("section", {class: "browse"}, h("h3", {}, "Browse"),
      h("div", {class: "row"}, filter, counts), status.node, grid, h("div", {class: "row pager"}, prev, pageInfo, next)));
  refresh();
  return null;
}

function addForm(onAdded) {
  const files = h("input", {type: "file", accept: "image/*", multiple: true, "data-testid": "add-files"});
  const folder = h("input", {type: "file", multiple: true, webkitdirectory: true, "data-testid": "add-folder"});
  const label = h("input", {type: "text", placeholder: "for every file (a folder: each sub-folder's name)",
                            "data-testid": "add-label", maxlength: 256});
  const metadata = h("input", {type: "text", placeholder: '{"source": "upload"} (optional, every file)',
                               "data-testid": "add-metadata"});
  const progress = h("progress", {value: 0, max: 1, "data-testid": "add-progress"});
  const progressText = h("span", {"data-testid": "add-progress-text"});
  const report = h("ol", {class: "report", "data-testid": "add-report"});
  const submit = h("button", {type: "submit", "data-testid": "add-submit"}, "Add to the gallery");

  async function upload(event) {
    event.preventDefault();
    const chosen = [...files.files, ...folder.files].filter((file) => !file.name.startsWith("."));
    if (!chosen.length) {
      fill(report, h("li", {class: "error"}, "choose files or a folder first"));
      return;
    }
    submit.disabled = true;
    fill(report);
    const batches = toBatches(chosen);
    let done = 0;
    let added = 0;
    progress.max = chosen.length;
    progress.value = 0;
    for (const [i, batch] of batches.entries()) {
      const form = new FormData();
      const labels = batch.map((file) => label.value.trim() || folderLabel(file));
      const externalIds = batch.map((file) => file.webkitRelativePath || "");
      batch.forEach((file, j) => {
        form.append("files", file, file.name);
        if (labels.some(Boolean)) form.append("labels", labels[j]);
        if (externalIds.some(Boolean)) form.append("external_ids", externalIds[j]);
        if (metadata.value.trim()) form.append("metadata", metadata.value.trim());
      });
      const name = `batch ${i + 1} of ${batches.length} (${batch.length} file${batch.length === 1 ? "" : "s"}, `
        + `${batch[0].name}…)`;
      try {
        const answer = await api("/gallery", {method: "POST", form});
        added += answer.items.length;
        report.append(h("li", {class: "ok"}, `${name}: ${answer.items.length} added`));
      } catch (err) {
        report.append(h("li", {class: "error"},
                        `${name}: nothing added: ${err.status ? `${err.status} ${err.code}: ${err.detail}` : err}`));
      }
      done += batch.length;
      progress.value = done;
      progressText.textContent = `${done} of ${chosen.length} files sent, ${added} added`;
    }
    submit.disabled = false;
    files.value = "";
    folder.value = "";
    onAdded();
  }

  return h("form", {class: "add", onsubmit: upload, "data-testid": "add-form"},
    h("h3", {}, "Add images"),
    h("div", {class: "options"},
      h("label", {}, "files", files), h("label", {}, "or a folder (one sub-folder per label)", folder),
      h("label", {}, "label", label), h("label", {}, "metadata (JSON)", metadata)),
    h("div", {class: "row"}, submit, progress, progressText), report);
}

function folderLabel(file) {
  const parts = (file.webkitRelativePath || "").split("/");
  return parts.length > 2 ? parts[parts.length - 2] : "";
}

function toBatches(files) {
  const batches = [];
  let current = [];
  let bytes = 0;
  for (const file of files) {
    if (current.length && (current.length >= BATCH_FILES || bytes + file.size > BATCH_BYTES)) {
      batches.push(current);
      current = [];
      bytes = 0;
    }
    current.push(file);
    bytes += file.size;
  }
  if (current.length) batches.push(current);
  return batches;
}

function renderItem(root, itemId) {
  const status = statusLine("item-status");
  const body = h("div", {class: "item-view"});
  fill(root, h("p", {}, h("a", {href: "#/gallery"}, "← back to the gallery")),
       h("h2", {}, `Item #${itemId}`), status.node, body);

  async function load() {
    let item;
    try {
      item = await api(`/gallery/${itemId}`);
    } catch (err) {
      status.error(err);
      return;
    }
    const labelInput = h("input", {type: "text", value: item.label ?? "", maxlength: 256,
                                   "data-testid": "item-label-input"});
    const metadataInput = h("textarea", {rows: 4, "data-testid": "item-metadata-input"}, jsonText(item.metadata));
    const save = async (event) => {
      event.preventDefault();
      let metadata;
      try {
        metadata = JSON.parse(metadataInput.value || "{}");
      } catch (err) {
        status.error(`metadata is not JSON: ${err.message}`);
        return;
      }
      try {
        await api(`/gallery/${itemId}`, {method: "PATCH",
                                         json: {label: labelInput.value.trim() || null, metadata}});
        status.info("saved");
        load();
      } catch (err) {
        status.error(err);
      }
    };
    const remove = async () => {
      if (!confirm(`Delete item #${itemId}? Its image is erased unless another item shares it.`)) return;
      try {
        await api(`/gallery/${itemId}`, {method: "DELETE"});
        location.hash = "#/gallery";
      } catch (err) {
        status.error(err);
      }
    };
    fill(body,
      h("figure", {}, item.has_image === false ? noImage(`item ${itemId}`, "full")
        : apiImage(`/gallery/${itemId}/image`, `item ${itemId}`, "full")),
      h("div", {},
        h("dl", {class: "facts"},
          h("dt", {}, "label"), h("dd", {"data-testid": "item-label"}, item.label ?? "–"),
          h("dt", {}, "external id"), h("dd", {"data-testid": "item-external-id"}, item.external_id ?? "–"),
          h("dt", {}, "added"), h("dd", {}, when(item.created_at)),
          h("dt", {}, "sha256"), h("dd", {class: "hash"}, item.sha256 ?? "– (no image)")),
        h("h3", {}, "Metadata"), h("pre", {class: "metadata", "data-testid": "item-metadata"}, jsonText(item.metadata)),
        h("form", {class: "edit", onsubmit: save},
          h("label", {}, "label", labelInput), h("label", {}, "metadata (JSON)", metadataInput),
          h("div", {class: "row"},
            h("button", {type: "submit", "data-testid": "item-save"}, "Save"),
            h("a", {class: "button", href: `#/search/similar/${itemId}`, "data-testid": "item-similar"},
              "Search by this item"),
            h("button", {type: "button", class: "danger", onclick: remove, "data-testid": "item-delete"},
              "Delete")))));
  }

  load();
  return null;
}
