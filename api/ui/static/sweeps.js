// The team's sweeps (admins: every team's), newest first, paged.
import {apiJSON, countsText, h, initShell, pagedList, showMessage, statusBadge, when} from "./common.js";

function row(sweep) {
  return h("tr", {dataset: {sweepId: sweep.id, status: sweep.status}},
    h("td", {}, h("a", {href: `/ui/sweeps/${encodeURIComponent(sweep.id)}`, text: sweep.name || sweep.id.slice(0, 8)})),
    h("td", {}, statusBadge(sweep.status)),
    h("td", {text: `${sweep.size}: ${countsText(sweep.counts)}`}),
    h("td", {text: sweep.axes.map((axis) => `${axis.path} ∈ {${axis.values.join(", ")}}`).join(" × ")}),
    h("td", {text: sweep.seeds.join(", ")}),
    h("td", {text: when(sweep.created_at)}));
}

async function fetchPage(query) {
  let listing;
  try {
    listing = await apiJSON(`/v1/sweeps?${query}`);
  } catch (error) {
    showMessage("sweeps-message", `Could not list sweeps: ${error.message}`);
    return null;
  }
  showMessage("sweeps-message", listing.count ? "" : "No sweeps yet (coscope sweep submit, or POST /v1/sweeps).");
  document.querySelector("#sweeps tbody").replaceChildren(...listing.data.map(row));
  return listing;
}

const list = pagedList({path: "/ui/sweeps", countId: "sweeps-count", fetchPage});
await initShell();
await list.refresh();
