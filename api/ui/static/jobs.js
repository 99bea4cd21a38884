// The team's jobs (admins: every team's, with the team), newest first, filtered by status and tag, paged.
import {FINISHED, apiJSON, h, initShell, pagedList, percent, progressText, showMessage, statusBadge,
  verdictBadge, when} from "./common.js";

const REFRESH_MS = 5000; // while any listed job is unfinished
const form = document.getElementById("filters");
const statusInput = document.getElementById("filter-status");
const tagInput = document.getElementById("filter-tag");
let admin = false;
let timer = null;

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

async function fetchPage(query) {
  clearTimeout(timer);
  let listing;
  try {
    listing = await apiJSON(`${admin ? "/v1/admin/jobs" : "/v1/jobs"}?${query}`);
  } catch (error) {
    showMessage("jobs-message", `Could not list jobs: ${error.message}`);
    return null;
  }
  showMessage("jobs-message", listing.count ? "" : "No jobs match.");
  document.querySelector("#jobs tbody").replaceChildren(...listing.data.map(row));
  if (listing.data.some((job) => !FINISHED.has(job.status))) timer = setTimeout(() => list.refresh(), REFRESH_MS);
  return listing;
}

const list = pagedList({path: "/ui/jobs", countId: "jobs-count", filters: {status: "", tag: ""}, fetchPage});
statusInput.value = list.state.status;
tagInput.value = list.state.tag;
form.addEventListener("submit", (event) => {
  event.preventDefault();
  list.go({status: statusInput.value, tag: tagInput.value.trim(), page: 0});
});

const me = await initShell();
admin = me.role === "admin";
for (const cell of document.querySelectorAll(".admin-only")) cell.hidden = !admin;
await list.refresh();
