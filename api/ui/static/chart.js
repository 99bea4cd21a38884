// A small SVG line chart (no library): series of [step, value] points, optional log scale, an optional
// vertical markers (the CO onset, rescues). Colours come from presentation attributes, so the strict CSP holds.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 640;
const HEIGHT = 240;
const PAD = {left: 56, right: 12, top: 12, bottom: 30};
export const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"];

function svg(tag, attributes = {}, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

function ticks(low, high, count = 5) {
  if (high <= low) return [low];
  const raw = (high - low) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const values = [];
  for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) values.push(Number(v.toPrecision(12)));
  return values;
}

function label(value, log) {
  if (log) return `1e${Math.round(value)}`;
  const magnitude = Math.abs(value);
  if (magnitude !== 0 && (magnitude < 0.01 || magnitude >= 1e5)) return value.toExponential(0);
  return String(Number(value.toPrecision(3)));
}

/** A <figure> with the chart and its legend; ``dataset.points`` is the number of points drawn. */
export function lineChart({title, series, log = false, yMin, yMax, markers = []}) {
  markers = markers.filter((marker) => isFinite(marker.x));
  const transform = log ? (v) => Math.log10(Math.max(v, 1e-12)) : (v) => v;
  const drawn = series.map((s) => ({...s, points: s.points.filter(([x, y]) => isFinite(x) && isFinite(y) && (!log || y > 0))}));
  const all = drawn.flatMap((s) => s.points);
  const xs = all.map(([x]) => x);
  const ys = all.map(([, y]) => transform(y));
  let [x0, x1] = xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, 1];
  for (const {x} of markers) [x0, x1] = [Math.min(x0, x), Math.max(x1, x)];
  if (x1 === x0) x1 = x0 + 1;
  let y0 = yMin ?? (ys.length ? Math.min(...ys) : 0);
  let y1 = yMax ?? (ys.length ? Math.max(...ys) : 1);
  if (log) [y0, y1] = [Math.floor(y0), Math.ceil(y1)];
  if (y1 === y0) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const px = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (WIDTH - PAD.left - PAD.right);
  const py = (y) => HEIGHT - PAD.bottom - ((transform(y) - y0) / (y1 - y0)) * (HEIGHT - PAD.top - PAD.bottom);
  const pyRaw = (t) => HEIGHT - PAD.bottom - ((t - y0) / (y1 - y0)) * (HEIGHT - PAD.top - PAD.bottom);

  const chart = svg("svg", {viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": title, class: "chart"});
  chart.append(svg("rect", {x: PAD.left, y: PAD.top, width: WIDTH - PAD.left - PAD.right,
                            height: HEIGHT - PAD.top - PAD.bottom, fill: "#ffffff", stroke: "#c8ccd2"}));
  for (const t of ticks(y0, y1, log ? Math.min(6, y1 - y0) : 5)) {
    const y = pyRaw(t);
    chart.append(svg("line", {x1: PAD.left, x2: WIDTH - PAD.right, y1: y, y2: y, stroke: "#eceef1"}));
    chart.append(svg("text", {x: PAD.left - 6, y: y + 4, "text-anchor": "end", class: "tick"}, label(t, log)));
  }
  for (const t of ticks(x0, x1, 6)) {
    const x = px(t);
    chart.append(svg("text", {x, y: HEIGHT - PAD.bottom + 16, "text-anchor": "middle", class: "tick"}, label(t, false)));
  }
  chart.append(svg("text", {x: WIDTH - PAD.right, y: HEIGHT - 2, "text-anchor": "end", class: "tick"}, "step"));
  drawn.forEach((s, index) => {
    if (!s.points.length) return;
    const colour = s.colour || PALETTE[index % PALETTE.length];
    const path = s.points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ");
    chart.append(svg("polyline", {points: path, fill: "none", stroke: colour, "stroke-width": 1.6,
                                  "data-series": s.name}));
    if (s.points.length <= 60) {
      for (const [x, y] of s.points) chart.append(svg("circle", {cx: px(x), cy: py(y), r: 2.2, fill: colour}));
    }
  });
  markers.forEach((marker, index) => { // {x, label, kind: "onset" (red, dashed) or "rescue" (green)}
    const x = px(marker.x);
    const colour = marker.kind === "rescue" ? "#1b7a36" : "#b00020";
    chart.append(svg("line", {x1: x, x2: x, y1: PAD.top, y2: HEIGHT - PAD.bottom, stroke: colour,
                              "stroke-dasharray": marker.kind === "rescue" ? "none" : "5 4", "stroke-width": 1.5,
                              class: marker.kind || "onset"}));
    chart.append(svg("text", {x: x + 4, y: PAD.top + 12 + 13 * index, class: "marker-label", fill: colour},
                     marker.label));
  });

  const legend = document.createElement("ul");
  legend.className = "legend";
  drawn.forEach((s, index) => {
    const item = document.createElement("li");
    const swatch = svg("svg", {width: 14, height: 4, "aria-hidden": "true"});
    swatch.append(svg("rect", {width: 14, height: 4, fill: s.colour || PALETTE[index % PALETTE.length]}));
    item.append(swatch, ` ${s.name}${s.points.length ? "" : " (none yet)"}`);
    legend.append(item);
  });
  const figure = document.createElement("figure");
  figure.className = "panel";
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  figure.append(caption, chart, legend);
  figure.dataset.points = String(all.length);
  return figure;
}
