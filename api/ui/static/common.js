// Shared by every dashboard page: the API key, authenticated fetch, safe element building, formatting, the
// CO verdict badge and a Server-Sent Events reader. User-provided strings only ever become text nodes
// (textContent), never HTML.

const KEY = "coscope.apiKey"; // sessionStorage: this tab only, gone when it closes; never a cookie or a URL

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const clearKey = () => sessionStorage.removeItem(KEY);

export const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

/** Back to the sign-in page, saying why, and returning here after. */
export function toSignIn(reason) {
  const next = location.pathname + location.search;
  const query = new URLSearchParams({next});
  if (reason) query.set("reason", reason);
  location.assign(`/ui/?${query}`);
}

/** fetch with the Bearer key; a 401 clears the key and goes to the sign-in page. */
export async function api(path, {method = "GET", body, headers = {}, signal} = {}) {
  const key = getKey();
  if (!key) {
    toSignIn();
    throw new Error("not signed in");
  }
  const init = {method, signal, headers: {Authorization: `Bearer ${key}`, ...headers}};
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    clearKey();
    toSignIn("expired");
    throw new Error("the API key was not accepted");
  }
  return response;
}

/** The JSON body of a successful request; otherwise an Error carrying the API's detail. */
export async function apiJSON(path, options) {
  const response = await api(path, options);
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(describeDetail(data?.detail) || `HTTP ${response.status}`);
    error.status = response.status;
    error.detail = data?.detail;
    throw error;
  }
  return data;
}

export function describeDetail(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((problem) => `${fieldOf(problem.loc)}: ${problem.msg}`).join("; ");
  return "";
}

/** A 422 problem's field as a dotted path, without the leading "body". */
export function fieldOf(loc) {
  const parts = (loc || []).slice(loc && loc[0] === "body" ? 1 : 0);
  return parts.join(".") || "request";
}

/** An element with attributes and children; strings become text nodes. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") element.textContent = value;
    else if (name === "class") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export const percent = (value) => (typeof value === "number" ? `${(100 * value).toFixed(1)} %` : "—");

/** Dates from the API are naive UTC ISO strings. */
export function when(iso) {
  if (!iso) return "—";
  const date = new Date(/[zZ]|[+-]\d\d:\d\d$/.test(iso) ? iso : `${iso}Z`);
  return date.toLocaleString(undefined, {dateStyle: "short", timeStyle: "short"});
}

export function duration(seconds) {
  if (typeof seconds !== "number" || !isFinite(seconds)) return "";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

export function progressText(job) {
  const p = job.progress || {};
  if (!p.total_steps) return job.status === "succeeded" ? "done" : "—";
  const share = Math.min(1, (p.step || 0) / p.total_steps);
  const eta = job.status === "running" && p.eta_seconds != null ? `, ETA ${duration(p.eta_seconds)}` : "";
  return `${Math.round(100 * share)} % (step ${p.step}/${p.total_steps}, epoch ${(p.epoch ?? 0) + 1}${eta})`;
}

/** The CO verdict as a badge: kind (for colour) and words; core/co.py's codes, or the job's state. */
export function verdict(job) {
  const co = job.co;
  const code = co?.verdict ?? (co?.detected ? "co" : null);
  if (code === "co" && co.rescue?.rescues?.length) return {kind: "rescued", text: `CO at step ${co.onset_step ?? "?"}, rescued`};
  if (code === "co") return {kind: "co", text: `CO at step ${co.onset_step ?? "?"}`};
  if (code === "suspected") return {kind: "suspected", text: `CO suspected at step ${co.onset_step ?? "?"}`};
  if (code === "never_robust") return {kind: "never", text: "never robust"};
  if (job.status === "succeeded") return {kind: "ok", text: "no CO"};
  if (FINISHED.has(job.status)) return {kind: "none", text: `no verdict (${job.status})`};
  return {kind: "pending", text: "pending"};
}

export const verdictBadge = (job) => {
  const {kind, text} = verdict(job);
  return h("span", {class: `badge verdict-${kind}`, text});
};

/** Children per state, e.g. "3 succeeded, 1 running". */
export const countsText = (counts) => Object.entries(counts).filter(([, n]) => n)
  .map(([state, n]) => `${n} ${state}`).join(", ") || "none";

export const statusBadge = (status) => h("span", {class: `badge status-${status}`, text: status});

/** Updates a status badge in place (tests and screen readers keep the same element). */
export function setStatus(element, status) {
  element.className = `badge status-${status}`;
  element.textContent = status;
}

/** Common page set-up: the key is required, the header shows who is signed in and offers sign-out. */
export async function initShell() {
  if (!getKey()) {
    toSignIn();
    return new Promise(() => {}); // never resolves: the page is leaving
  }
  const page = document.body.dataset.page;
  for (const link of document.querySelectorAll("nav [data-nav]")) {
    if (page.startsWith(link.dataset.nav.replace(/s$/, ""))) link.setAttribute("aria-current", "page");
  }
  const signOut = document.getElementById("sign-out");
  signOut.hidden = false;
  signOut.addEventListener("click", () => {
    clearKey();
    location.assign("/ui/");
  });
  const me = await apiJSON("/v1/me");
  document.getElementById("whoami").textContent = `${me.name} · team ${me.team}${me.role === "admin" ? " · admin" : ""}`;
  return me;
}

/** The list pages' shared part: filters and page kept in the URL (a view can be bookmarked, the back button
 * works), the Newer / Older buttons and the "1–25 of N" count. ``fetchPage(query)`` gets the page's
 * ``limit``/``offset`` (and set filters) in ``query``, renders the page and returns the listing ({data, count}),
 * or nothing when it failed. */
export function pagedList({path, countId, filters = {}, pageSize = 25, fetchPage}) {
  const params = new URLSearchParams(location.search);
  const state = {page: Math.max(0, Number.parseInt(params.get("page") || "0", 10) || 0)};
  for (const name of Object.keys(filters)) state[name] = params.get(name) || filters[name];

  async function refresh() {
    const query = new URLSearchParams({limit: pageSize, offset: state.page * pageSize});
    for (const name of Object.keys(filters)) if (state[name]) query.set(name, state[name]);
    const listing = await fetchPage(query);
    if (!listing) return;
    const last = state.page * pageSize + listing.data.length;
    document.getElementById(countId).textContent =
      `${listing.count ? state.page * pageSize + 1 : 0}–${last} of ${listing.count}`;
    document.getElementById("prev").disabled = state.page === 0;
    document.getElementById("next").disabled = last >= listing.count;
  }

  function go(changes) {
    Object.assign(state, changes);
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(state)) if (value) query.set(name, value);
    history.pushState(null, "", `${path}${query.size ? `?${query}` : ""}`);
    refresh();
  }

  document.getElementById("prev").addEventListener("click", () => go({page: Math.max(0, state.page - 1)}));
  document.getElementById("next").addEventListener("click", () => go({page: state.page + 1}));
  window.addEventListener("popstate", () => location.reload());
  return {state, go, refresh};
}

export function showMessage(id, text) {
  const element = document.getElementById(id);
  element.textContent = text || "";
  element.hidden = !text;
}

/** Downloads an authenticated file (a plain link cannot send the Bearer header). */
export async function download(path, filename) {
  const response = await api(path);
  if (!response.ok) throw new Error(`${filename}: HTTP ${response.status}`);
  const url = URL.createObjectURL(await response.blob());
  const link = h("a", {href: url, download: filename});
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** Shows an authenticated image in an <img>; resolves to whether it loaded. */
export async function showImage(img, path) {
  const response = await api(path);
  if (!response.ok) return false;
  const url = URL.createObjectURL(await response.blob());
  const previous = img.dataset.objectUrl;
  await new Promise((resolve) => {
    img.addEventListener("load", resolve, {once: true});
    img.addEventListener("error", resolve, {once: true});
    img.src = url;
  });
  img.dataset.objectUrl = url;
  if (previous) URL.revokeObjectURL(previous);
  return img.naturalWidth > 0;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function parseFrame(block) {
  const event = {id: null, type: "message", data: ""};
  let seen = false;
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // comments keep the connection alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") event.id = Number(value);
    else if (field === "event") event.type = value;
    else if (field === "data") event.data += value;
    seen = true;
  }
  if (!seen) return null;
  try {
    event.data = JSON.parse(event.data || "null");
  } catch {
    return null;
  }
  return event;
}

/** Follows an SSE route (fetch, because EventSource cannot send the Bearer header) until the server ends
 * the stream (the job or sweep finished); on a dropped connection it resumes with Last-Event-ID. */
export async function follow(path, onEvent, {signal} = {}) {
  let lastId = 0;
  for (let failures = 0; !signal?.aborted; ) {
    try {
      const response = await api(path, {signal, headers: {"Last-Event-ID": String(lastId)}});
      if (response.status === 404) return; // gone (purged) or never ours: nothing to follow
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) return;
        failures = 0;
        buffer += value.replace(/\r\n?/g, "\n");
        for (let cut = buffer.indexOf("\n\n"); cut >= 0; cut = buffer.indexOf("\n\n")) {
          const event = parseFrame(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!event) continue;
          if (event.id !== null) lastId = event.id;
          onEvent(event);
        }
      }
    } catch (error) {
      if (signal?.aborted) return;
      failures += 1;
      await sleep(Math.min(10_000, 500 * 2 ** failures));
    }
  }
}
