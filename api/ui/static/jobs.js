// The team's jobs (admins: every team's, with the team), newest first, filtered by status and tag, paged.
// Filters and page live in the URL, so a view can be bookmarked and the back button works.
import {FINISHED, apiJSON, h, initShell, percent, progressText, showMessage, statusBadge, verdictBadge, when}
  from "./common.js";

const PAGE_SIZE = 25;
const REFRESH_MS = 5000; // while any listed job is unfinished
const params = new URLSearchParams(location.search);
const state = {status: params.get("status") || "", tag: params.get("tag") || "",
               page: Math.max(0, Number.parseInt(params.get("page") || "0", 10) || 0)};
const form = document.getElementById("filters");
const statusInput = document.getElementById("filter-status");
const tagInput = document.getElementById("filter-tag");
let admin = false;
let timer = null;

statusInput.value = state.status;
tagInput.value = state.tag;

function row(job) {
  const cells = [
    h("td", {}, h("a", {href: `/ui/jobs/${encodeURIComponent(job.id)}`, text: job.name || job.id.slice(0, 8)})),
    admin ? h("td", {text: job.team}) : null,
    h("td", {}, statusBadge(job.status)),
    h("td", {text: progressText(job)}),
    h("td", {}, verdictBadge(job)),
    h("td", {class: "number", text: percent(job.final?.clean_accuracy)}),
    h("td", {class: "number", text: percent(job.final?.robust_accuracy)}),
    h("td", {text: when(job.created_at)}),
  ];
  return h("tr", {dataset: {jobId: job.id, status: job.status}}, cells);
}

async function load() {
  clearTimeout(timer);
  const query = new URLSearchParams({limit: PAGE_SIZE, offset: state.page * PAGE_SIZE});
  if (state.status) query.set("status", state.status);
  if (state.tag) query.set("tag", state.tag);
  let listing;
  try {
    listing = await apiJSON(`${admin ? "/v1/admin/jobs" : "/v1/jobs"}?${query}`);
  } catch (error) {
    showMessage("jobs-message", `Could not list jobs: ${error.message}`);
    return;
  }
  showMessage("jobs-message", listing.count ? "" : "No jobs match.");
  document.querySelector("#jobs tbody").replaceChildren(...listing.data.map(row));
  const first = listing.count ? state.page * PAGE_SIZE + 1 : 0;
  const last = state.page * PAGE_SIZE + listing.data.length;
  document.getElementById("jobs-count").textContent = `${first}–${last} of ${listing.count}`;
  document.getElementById("prev").disabled = state.page === 0;
  document.getElementById("next").disabled = last >= listing.count;
  if (listing.data.some((job) => !FINISHED.has(job.status))) timer = setTimeout(load, REFRESH_MS);
}

function go(changes) {
  Object.assign(state, changes);
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(state)) if (value) query.set(name, value);
  history.pushState(null, "", `/ui/jobs${query.size ? `?${query}` : ""}`);
  load();
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  go({status: statusInput.value, tag: tagInput.value.trim(), page: 0});
});
document.getElementById("prev").addEventListener("click", () => go({page: Math.max(0, state.page - 1)}));
document.getElementById("next").addEventListener("click", () => go({page: state.page + 1}));
window.addEventListener("popstate", () => location.reload());

const me = await initShell();
admin = me.role === "admin";
for (const cell of document.querySelectorAll(".admin-only")) cell.hidden = !admin;
await load();
