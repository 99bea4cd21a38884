// One sweep: status and counts, the heatmap and the per-cell table (children linked), downloads, cancel.
// Polled while unfinished; the heatmap (an SVG the API draws, shown as an <img>, never inserted as markup) is
// fetched again only when a child finished.
import {FINISHED, api, apiJSON, countsText, download, h, initShell, percent, setStatus,
  showImage, showMessage} from "./common.js";

const POLL_MS = 3000;
const sweepId = decodeURIComponent(location.pathname.split("/").pop());
const base = `/v1/sweeps/${encodeURIComponent(sweepId)}`;
const SWEEP_FINISHED = new Set(["succeeded", "failed", "cancelled", "partial"]);
let shownCounts = null;

const stat = (s, format) => (s ? `${format(s.mean)}${s.std != null ? ` ± ${format(s.std)}` : ""}` : "—");

function coText(co) {
  if (!co.measured) return "—";
  const never = co.verdicts.filter((v) => v.verdict === "never_robust").length;
  if (co.collapsed) {
    const onset = co.onset_step ? ` @ step ${stat(co.onset_step, (v) => Math.round(v))}` : "";
    return `CO ${co.collapsed}/${co.measured}${onset}`;
  }
  return never === co.measured ? "never robust" : `no CO (${co.measured})`;
}

function renderCells(sweep) {
  const axes = sweep.axes.map((axis) => axis.path);
  const head = [...axes, "clean", "robust", "CO", "jobs"].map((name) => h("th", {scope: "col", text: name}));
  document.querySelector("#cells thead tr").replaceChildren(...head);
  document.querySelector("#cells tbody").replaceChildren(...sweep.cells.map((cell) => h("tr", {dataset: {cell: cell.index}},
    axes.map((path) => h("td", {text: String(cell.params[path])})),
    h("td", {class: "number", text: stat(cell.clean_accuracy, percent)}),
    h("td", {class: "number", text: stat(cell.robust_accuracy, percent)}),
    h("td", {text: coText(cell.co)}),
    h("td", {}, cell.jobs.map((child) => h("a", {href: `/ui/jobs/${encodeURIComponent(child.id)}`,
      class: `child status-${child.status}`, text: `seed ${child.seed}: ${child.status}`, dataset: {jobId: child.id}}))))));
}

async function load() {
  const sweep = await apiJSON(base);
  document.title = `${sweep.name || sweep.id} · coscope`;
  document.getElementById("sweep-name").textContent = sweep.name || `Sweep ${sweep.id.slice(0, 8)}`;
  document.getElementById("sweep-id").textContent = sweep.id;
  setStatus(document.getElementById("sweep-status"), sweep.status);
  document.getElementById("sweep-counts").textContent = countsText(sweep.counts);
  document.getElementById("sweep-seeds").textContent = sweep.seeds.join(", ");
  document.getElementById("cancel").hidden = SWEEP_FINISHED.has(sweep.status);
  renderCells(sweep);
  const finished = Object.entries(sweep.counts).filter(([state]) => FINISHED.has(state)).map(([, n]) => n).join();
  if (finished !== shownCounts) {
    const img = document.getElementById("heatmap");
    if (await showImage(img, `${base}/artifacts/heatmap.svg`)) {
      img.alt = `Heatmap of ${sweep.name || "the sweep"}: robust accuracy, clean accuracy and CO onset per cell`;
      shownCounts = finished;
    }
  }
  if (!SWEEP_FINISHED.has(sweep.status)) setTimeout(() => load().catch(() => setTimeout(load, POLL_MS)), POLL_MS);
}

for (const [id, name] of [["download-csv", "table.csv"], ["download-json", "table.json"], ["download-svg", "heatmap.svg"]]) {
  document.getElementById(id).addEventListener("click", () =>
    download(`${base}/artifacts/${name}`, `${sweepId}-${name}`).catch((error) => showMessage("sweep-message", error.message)));
}
document.getElementById("cancel").addEventListener("click", async (event) => {
  event.target.disabled = true;
  const response = await api(`${base}/cancel`, {method: "POST"});
  const body = await response.json().catch(() => ({}));
  showMessage("sweep-message", response.ok ? "Cancel requested for every unfinished child."
    : `Could not cancel: ${body.detail || `HTTP ${response.status}`}`);
  event.target.disabled = false;
  await load();
});

await initShell();
try {
  await load();
} catch (error) {
  showMessage("sweep-message", error.status === 404 ? "No such sweep (or not your team's)." : `Could not load the sweep: ${error.message}`);
}
