// Submit a job from a pasted or uploaded YAML/JSON spec; the API's 422 problems are listed with their field.
// The file may hold a spec (as in examples/) or a whole request ({"spec": ..., "name": ..., "tags": [...]}).
import {api, fieldOf, h, initShell} from "./common.js";

const form = document.getElementById("submit");
const text = document.getElementById("spec");
const problems = document.getElementById("problems");

function showProblems(items) {
  text.setAttribute("aria-invalid", items.length ? "true" : "false");
  problems.replaceChildren(...(items.length ? [
    h("p", {text: items.length === 1 ? "The job was not submitted:" : `The job was not submitted (${items.length} problems):`}),
    h("ul", {}, items.map(({field, message}) => h("li", {dataset: {field}}, h("code", {text: field}), `: ${message}`))),
  ] : []));
  if (items.length) problems.scrollIntoView({block: "nearest"});
}

function parse(source) {
  try {
    return {value: window.jsyaml.load(source)}; // YAML 1.2 is a superset of JSON
  } catch (error) {
    const line = error.mark ? ` (line ${error.mark.line + 1})` : "";
    return {problem: `not valid YAML or JSON${line}: ${error.reason || error.message}`};
  }
}

function requestBody(value) {
  const isObject = value && typeof value === "object" && !Array.isArray(value);
  if (!isObject) return null;
  const body = "spec" in value ? {...value} : {spec: value};
  const name = document.getElementById("job-name-input").value.trim();
  const tags = document.getElementById("job-tags-input").value.split(",").map((tag) => tag.trim()).filter(Boolean);
  if (name) body.name = name;
  if (tags.length) body.tags = tags;
  return body;
}

document.getElementById("spec-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (file) text.value = await file.text();
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const {value, problem} = parse(text.value);
  if (problem) return showProblems([{field: "spec", message: problem}]);
  const body = requestBody(value);
  if (!body) return showProblems([{field: "spec", message: "the spec must be a mapping of sections (dataset, training, ...)"}]);
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const response = await api("/v1/jobs", {method: "POST", body});
    const answer = await response.json().catch(() => ({}));
    if (response.status === 201 || response.status === 200) {
      location.assign(`/ui/jobs/${encodeURIComponent(answer.id)}`);
      return;
    }
    const detail = answer.detail;
    showProblems(Array.isArray(detail)
      ? detail.map((item) => ({field: fieldOf(item.loc), message: item.msg}))
      : [{field: "request", message: `${detail || `HTTP ${response.status}`}${response.headers.get("Retry-After") ? ` (retry in ${response.headers.get("Retry-After")} s)` : ""}`}]);
  } catch (error) {
    showProblems([{field: "request", message: `the server did not answer: ${error.message}`}]);
  } finally {
    button.disabled = false;
  }
});

await initShell();
