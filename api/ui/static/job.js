// One job: status, progress and ETA, the CO verdict in words and its rescues, live curves over SSE, artifacts,
// spec, cancel.
import {lineChart} from "./chart.js";
import {FINISHED, api, apiJSON, download, follow, h, initShell, percent, progressText, setStatus,
  showMessage, verdict} from "./common.js";

const TRAIN_REFRESH_MS = 2000; // training rows are not streamed (one per logged step): re-read at most this often
const jobId = decodeURIComponent(location.pathname.split("/").pop());
const base = `/v1/jobs/${encodeURIComponent(jobId)}`;
const rows = {train: new Map(), epoch: new Map(), monitor: new Map()}; // kind -> step -> row
let job = null;
let report = null;
let trainTimer = null;
let drawPending = false;

function keep(row) {
  rows[row.kind]?.set(row.step, row);
}

const series = (kind, field, name) => ({
  name, points: [...rows[kind].values()].filter((row) => typeof row[field] === "number")
    .map((row) => [row.step, row[field]]).sort((a, b) => a[0] - b[0]),
});

const rescues = () => job?.co?.rescue?.rescues ?? [];

function markers() {
  const co = job?.co;
  const code = co?.verdict ?? (co?.detected ? "co" : null);
  const onset = ["co", "suspected"].includes(code) && typeof co.onset_step === "number"
    ? [{x: co.onset_step, label: `CO onset (step ${co.onset_step})`, kind: "onset"}] : [];
  return [...onset, ...rescues().map((r) => ({x: r.at_step, label: `rescue ${r.number} (step ${r.at_step})`, kind: "rescue"}))];
}

const METHOD_NAMES = {n_fgsm: "N-FGSM", grad_align: "GradAlign", fgsm: "FGSM"};

/** One rescue in words: when, what was restored, what trains since (core/trainer.py's co_rescued record). */
function rescueWords(r) {
  const lr = r.lr_scale !== 1 ? `, learning rate × ${r.lr_scale}` : "";
  const noise = r.noise_magnitude ? `, noise ${r.noise_magnitude}/255` : "";
  return `Rescue ${r.number} at step ${r.at_step} (onset at step ${r.onset_step}, ${r.rule} rule): restored the ` +
    `weights of step ${r.weights_from_step} (monitor PGD ${percent(r.best_monitor_pgd_accuracy)}) and their ` +
    `optimizer state; training goes on with ${METHOD_NAMES[r.method] ?? r.method} (α ${r.alpha}/255${noise}${lr}).`;
}

function draw() {
  drawPending = false;
  const lines = markers();
  const panels = [
    lineChart({title: "Training loss", series: [series("train", "train_loss", "train loss")], markers: lines}),
    lineChart({title: "Accuracy", yMin: 0, yMax: 1, markers: lines, series: [
      series("train", "train_clean_accuracy", "train clean"), series("train", "train_adv_accuracy", "train adversarial"),
      series("monitor", "clean_accuracy", "monitor clean"), series("monitor", "fgsm_accuracy", "monitor FGSM"),
      series("monitor", "pgd_accuracy", "monitor PGD"), series("epoch", "test_clean_accuracy", "test clean")]}),
    lineChart({title: "Gradient alignment (monitor)", markers: lines,
               series: [series("monitor", "gradient_alignment", "cos(∇ at x, ∇ at x + η)")]}),
    lineChart({title: "Linearity error (monitor, log scale)", log: true, markers: lines,
               series: [series("monitor", "linearity_error", "linearity error")]}),
  ];
  const curves = document.getElementById("curves");
  curves.replaceChildren(...panels);
  curves.dataset.points = String(panels.reduce((total, panel) => total + Number(panel.dataset.points), 0));
}

function scheduleDraw() {
  if (!drawPending) {
    drawPending = true;
    requestAnimationFrame(draw);
  }
}

function verdictWords() {
  const co = job.co;
  if (co?.verdict_text) return co.verdict_text;
  const {kind, text} = verdict(job);
  if (kind === "co" || kind === "suspected") {
    const rule = co.rule?.name ? ` by the ${co.rule.name} rule` : "";
    const epoch = typeof co.onset_epoch === "number" ? ` (epoch ${co.onset_epoch + 1})` : "";
    return `${kind === "co" ? "Catastrophic overfitting" : "Possible catastrophic overfitting"} detected${rule} at step ${co.onset_step}${epoch}.`;
  }
  if (kind === "pending") return job.status === "running" ? "No CO so far; the verdict is final when training ends." : "Pending: the job has not started.";
  return `${text[0].toUpperCase()}${text.slice(1)}.`;
}

function finalWords() {
  if (!job.final) return "—";
  const attack = report?.final?.attack;
  const how = attack ? ` (PGD-${attack.steps}×${attack.restarts}, ε ${attack.epsilon}/255, ${attack.test_images} test images)` : "";
  return `clean ${percent(job.final.clean_accuracy)} · robust ${percent(job.final.robust_accuracy)}${how}`;
}

function renderJob() {
  document.title = `${job.name || job.id} · coscope`;
  document.getElementById("job-name").textContent = job.name || `Job ${job.id.slice(0, 8)}`;
  document.getElementById("job-id").textContent = job.id;
  setStatus(document.getElementById("job-status"), job.status);
  const progress = document.getElementById("job-progress");
  const p = job.progress || {};
  progress.value = p.total_steps ? Math.min(1, p.step / p.total_steps) : job.status === "succeeded" ? 1 : 0;
  document.getElementById("job-progress-text").textContent = progressText(job);
  document.getElementById("job-final").textContent = finalWords();
  document.getElementById("job-tags").replaceChildren(...(job.tags || []).map((tag) => h("span", {class: "tag", text: tag})));
  const box = document.getElementById("verdict");
  box.textContent = verdictWords();
  box.className = `verdict verdict-${verdict(job).kind}`;
  const list = document.getElementById("rescues");
  list.replaceChildren(...rescues().map((r) => h("li", {text: rescueWords(r), "data-step": r.at_step})));
  list.hidden = !rescues().length;
  showMessage("job-error", job.error ? `${job.error.code}: ${job.error.message || ""}` : "");
  document.getElementById("cancel").hidden = FINISHED.has(job.status);
  const spec = document.getElementById("job-spec");
  if (!spec.textContent) spec.textContent = JSON.stringify(job.spec, null, 2);
}

async function loadArtifacts() {
  const {data} = await apiJSON(`${base}/artifacts`);
  const list = document.getElementById("artifacts");
  if (!data.length) return list.replaceChildren(h("li", {text: "none yet"}));
  list.replaceChildren(...data.map((artifact) => h("li", {},
    h("button", {type: "button", class: "link", text: artifact.name,
                 onclick: () => download(`${base}/artifacts/${encodeURIComponent(artifact.name)}`, artifact.name)
                   .catch((error) => showMessage("job-message", error.message))}),
    h("span", {class: "size", text: ` ${(artifact.size / 1024).toFixed(1)} KiB`}))));
}

async function loadMetrics(kind) {
  const {data} = await apiJSON(`${base}/metrics${kind ? `?kind=${kind}` : ""}`);
  data.forEach(keep);
  scheduleDraw();
}

function refreshTrainSoon() {
  if (!trainTimer) {
    trainTimer = setTimeout(() => {
      trainTimer = null;
      loadMetrics("train").catch(() => {});
    }, TRAIN_REFRESH_MS);
  }
}

async function loadAll() {
  job = await apiJSON(base);
  report = job.status === "succeeded" ? await apiJSON(`${base}/report`).catch(() => null) : null;
  renderJob();
  await Promise.all([loadMetrics(), loadArtifacts()]);
}

function onEvent({type, data}) {
  if (type === "epoch" || type === "monitor") {
    keep(data);
    scheduleDraw();
  } else if (type === "progress") {
    job.progress = data;
    renderJob();
    refreshTrainSoon();
  } else if (type === "co_onset" || type === "co_verdict") {
    job.co = data;
    renderJob();
    scheduleDraw();
  } else if (type === "co_rescued") { // the job's co carries it too; the stream may be first
    if (job.co && !rescues().some((r) => r.number === data.number)) {
      job.co = {...job.co, rescue: {...job.co.rescue, rescues: [...rescues(), data]}};
    }
    renderJob();
    scheduleDraw();
  } else if (type === "status") {
    job.status = data.status;
    renderJob();
  } else if (type === "cancel_requested") {
    showMessage("job-message", "Cancel requested: the job stops at its next step.");
  }
}

document.getElementById("cancel").addEventListener("click", async (event) => {
  event.target.disabled = true;
  const response = await api(`${base}/cancel`, {method: "POST"});
  const body = await response.json().catch(() => ({}));
  if (response.ok) {
    job = body;
    renderJob();
    showMessage("job-message", job.status === "cancelled" ? "Cancelled." : "Cancel requested: the job stops at its next step.");
  } else {
    showMessage("job-message", `Could not cancel: ${body.detail || `HTTP ${response.status}`}`);
  }
  event.target.disabled = false;
});

await initShell();
try {
  await loadAll();
} catch (error) {
  showMessage("job-message", error.status === 404 ? "No such job (or not your team's)." : `Could not load the job: ${error.message}`);
  throw error;
}
while (!FINISHED.has(job.status)) {
  await follow(`${base}/events`, onEvent);
  await loadAll(); // the stream ended: the job finished (or the server restarted): read its state again
  if (!FINISHED.has(job.status)) await new Promise((resolve) => setTimeout(resolve, 1000));
}
