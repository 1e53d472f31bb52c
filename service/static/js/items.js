// Thumbnails and item cards, shared by the search and gallery views.

import {imageUrl} from "./api.js";
import {fmt, h, jsonText} from "./dom.js";

const objectUrls = new Set();

/** Free the images of the previous view. */
export function releaseImages() {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls.clear();
}

/** An <img> that loads `path` (an API image) with the key; `alt` is set as text. */
export function apiImage(path, alt, className = "thumb") {
  const img = h("img", {class: className, alt, decoding: "async"});
  imageUrl(path).then((url) => {
    objectUrls.add(url);
    img.src = url;
  }).catch(() => {
    img.classList.add("missing");
    img.alt = `${alt} (image unavailable)`;
  });
  return img;
}

/** A placeholder in place of the image of an item that has none (imported as a vector only). */
export function noImage(alt, className = "thumb") {
  return h("div", {class: `${className} no-image`, role: "img", "aria-label": `${alt}: no image`,
                   "data-testid": "no-image"}, "no image");
}

/** The item's thumbnail, or the placeholder when it has no image. */
export function thumbnail(item) {
  const alt = `item ${item.id}`;
  return item.has_image === false ? noImage(alt) : apiImage(`/gallery/${item.id}/thumbnail`, alt);
}

/** A keyboard-usable card for an item or a search hit; `score` is shown when the hit has one. */
export function itemCard(item, onOpen, title) {
  const facts = h("dl", {class: "facts"},
    item.score !== undefined ? [h("dt", {}, "score"), h("dd", {class: "score", "data-testid": "score"},
                                                       fmt(item.score, 4))] : null,
    h("dt", {}, "label"), h("dd", {class: "label", "data-testid": "label"}, item.label ?? "–"),
    h("dt", {}, "id"), h("dd", {}, String(item.id)),
    item.external_id ? [h("dt", {}, "external id"), h("dd", {class: "external-id"}, item.external_id)] : null,
  );
  const metadata = Object.keys(item.metadata || {}).length
    ? h("pre", {class: "metadata"}, jsonText(item.metadata)) : null;
  return h("button", {type: "button", class: "card", "data-testid": "card", "data-item-id": item.id,
                      title, onclick: () => onOpen(item)},
    thumbnail(item), facts, metadata);
}
