// The team's sweeps (admins: every team's), newest first, paged.
import {apiJSON, countsText, h, initShell, showMessage, statusBadge, when} from "./common.js";

const PAGE_SIZE = 25;
let page = Math.max(0, Number.parseInt(new URLSearchParams(location.search).get("page") || "0", 10) || 0);

function row(sweep) {
  return h("tr", {dataset: {sweepId: sweep.id, status: sweep.status}},
    h("td", {}, h("a", {href: `/ui/sweeps/${encodeURIComponent(sweep.id)}`, text: sweep.name || sweep.id.slice(0, 8)})),
    h("td", {}, statusBadge(sweep.status)),
    h("td", {text: `${sweep.size}: ${countsText(sweep.counts)}`}),
    h("td", {text: sweep.axes.map((axis) => `${axis.path} ∈ {${axis.values.join(", ")}}`).join(" × ")}),
    h("td", {text: sweep.seeds.join(", ")}),
    h("td", {text: when(sweep.created_at)}));
}

async function load() {
  let listing;
  try {
    listing = await apiJSON(`/v1/sweeps?limit=${PAGE_SIZE}&offset=${page * PAGE_SIZE}`);
  } catch (error) {
    showMessage("sweeps-message", `Could not list sweeps: ${error.message}`);
    return;
  }
  showMessage("sweeps-message", listing.count ? "" : "No sweeps yet (coscope sweep submit, or POST /v1/sweeps).");
  document.querySelector("#sweeps tbody").replaceChildren(...listing.data.map(row));
  const last = page * PAGE_SIZE + listing.data.length;
  document.getElementById("sweeps-count").textContent = `${listing.count ? page * PAGE_SIZE + 1 : 0}–${last} of ${listing.count}`;
  document.getElementById("prev").disabled = page === 0;
  document.getElementById("next").disabled = last >= listing.count;
}

function go(to) {
  page = to;
  history.pushState(null, "", to ? `/ui/sweeps?page=${to}` : "/ui/sweeps");
  load();
}

document.getElementById("prev").addEventListener("click", () => go(Math.max(0, page - 1)));
document.getElementById("next").addEventListener("click", () => go(page + 1));
window.addEventListener("popstate", () => location.reload());
await initShell();
await load();
