// Building the page: elements made with createElement, every user string set as text (never HTML).

const SVG_NS = "http://www.w3.org/2000/svg";

function apply(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** `h("div", {class: "x", onclick: fn}, "text", child...)`: strings become text nodes. */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  apply(node, attrs);
  append(node, children);
  return node;
}

/** The same for SVG elements. */
export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  apply(node, attrs);
  append(node, children);
  return node;
}

/** Replace the children of `node`. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(digits);
  return String(value);
}

export function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 90) return `${value.toFixed(0)} s`;
  return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
}

export function when(epochSeconds) {
  return epochSeconds ? new Date(epochSeconds * 1000).toLocaleString() : "–";
}

/** A JSON value as indented text (for metadata, configs and metrics). */
export function jsonText(value) {
  return JSON.stringify(value, null, 2);
}

/** A status line that shows errors and progress in words. */
export function statusLine(testid) {
  const node = h("p", {class: "status", role: "status", "data-testid": testid});
  return {
    node,
    info(text) { node.className = "status"; node.textContent = text; },
    error(err) { node.className = "status error"; node.textContent = describe(err); },
    clear() { node.className = "status"; node.textContent = ""; },
  };
}

/** An error in words: the API's own `detail` and `code` when it sent them. */
export function describe(err) {
  if (err && err.status) return `${err.status} ${err.code}: ${err.detail}`;
  return String(err && err.message ? err.message : err);
}
