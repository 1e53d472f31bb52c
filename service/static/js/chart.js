// A small SVG line chart (no library): series of (x, y) points, optional horizontal reference lines.

import {h, svg} from "./dom.js";

const W = 480;
const H = 240;
const PAD = {left: 52, right: 12, top: 14, bottom: 34};

function ticks(low, high, count) {
  if (low === high) return [low];
  return Array.from({length: count + 1}, (_, i) => low + ((high - low) * i) / count);
}

/**
 * `lineChart({title, xLabel, series: [{name, points: [[x, y], ...]}], references: [{name, y}]})`:
 * a <figure> with the chart and a legend. Series are told apart by their CSS class `series-<i>`.
 */
export function lineChart({title, xLabel, series, references = [], testid}) {
  const points = series.flatMap((s) => s.points).filter(([, y]) => Number.isFinite(y));
  const ys = [...points.map(([, y]) => y), ...references.map((r) => r.y).filter(Number.isFinite)];
  const xs = points.map(([x]) => x);
  const figure = h("figure", {class: "chart", "data-testid": testid, "data-points": points.length});
  if (!points.length) {
    figure.append(h("figcaption", {}, `${title}: no finished epoch yet`));
    return figure;
  }
  let [yLow, yHigh] = [Math.min(...ys), Math.max(...ys)];
  if (yLow === yHigh) { yLow -= 0.5; yHigh += 0.5; }
  const margin = (yHigh - yLow) * 0.08;
  yLow -= margin; yHigh += margin;
  const [xLow, xHigh] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  const sx = (x) => PAD.left + ((x - xLow) / (xHigh - xLow)) * (W - PAD.left - PAD.right);
  const sy = (y) => H - PAD.bottom - ((y - yLow) / (yHigh - yLow)) * (H - PAD.top - PAD.bottom);
  const chart = svg("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title});
  chart.append(svg("rect", {class: "plot", x: PAD.left, y: PAD.top, width: W - PAD.left - PAD.right,
                            height: H - PAD.top - PAD.bottom}));
  for (const y of ticks(yLow, yHigh, 4)) {
    chart.append(svg("line", {class: "grid-line", x1: PAD.left, x2: W - PAD.right, y1: sy(y), y2: sy(y)}),
                 svg("text", {class: "tick", x: PAD.left - 6, y: sy(y) + 4, "text-anchor": "end"},
                     y.toPrecision(3)));
  }
  const xTicks = [...new Set(xs)].sort((a, b) => a - b);
  const every = Math.ceil(xTicks.length / 10);
  xTicks.filter((_, i) => i % every === 0).forEach((x) => {
    chart.append(svg("text", {class: "tick", x: sx(x), y: H - PAD.bottom + 16, "text-anchor": "middle"},
                     String(x)));
  });
  chart.append(svg("text", {class: "axis-label", x: (W + PAD.left) / 2, y: H - 4, "text-anchor": "middle"},
                   xLabel));
  references.forEach((ref, i) => {
    if (!Number.isFinite(ref.y)) return;
    chart.append(svg("line", {class: `reference reference-${i}`, x1: PAD.left, x2: W - PAD.right,
                              y1: sy(ref.y), y2: sy(ref.y)}));
  });
  series.forEach((s, i) => {
    const finite = s.points.filter(([, y]) => Number.isFinite(y));
    chart.append(svg("polyline", {class: `line series-${i}`,
                                  points: finite.map(([x, y]) => `${sx(x)},${sy(y)}`).join(" ")}));
    finite.forEach(([x, y]) => chart.append(svg("circle", {class: `dot series-${i}`, cx: sx(x), cy: sy(y), r: 3},
                                                 svg("title", {}, `${s.name}: epoch ${x}, ${y.toFixed(4)}`))));
  });
  const legend = h("figcaption", {},
    h("strong", {}, title), " ",
    series.map((s, i) => h("span", {class: `key series-${i}`}, s.name)),
    references.filter((r) => Number.isFinite(r.y))
      .map((r, i) => h("span", {class: `key reference-${i}`}, `${r.name} ${r.y.toFixed(4)}`)));
  figure.append(chart, legend);
  return figure;
}
