// Sign-in: the key is checked against the API (GET /v1/me) before it is kept in sessionStorage.
import {clearKey, getKey, setKey, showMessage} from "./common.js";

const form = document.getElementById("signin");
const input = document.getElementById("api_key");
const params = new URLSearchParams(location.search);
// only a path of this dashboard: the parameter is in the URL, so it must not send the user elsewhere
const next = /^\/ui\/[A-Za-z0-9/_-]*(\?[A-Za-z0-9=&%_.-]*)?$/.test(params.get("next") || "") ? params.get("next") : "/ui/jobs";

if (params.get("reason") === "expired") {
  showMessage("signin-message", "Your API key was not accepted any more (revoked or wrong): sign in again.");
} else if (getKey()) {
  location.replace(next);
}
input.focus();

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = input.value.trim();
  if (!key) {
    showMessage("signin-message", "Enter an API key.");
    input.focus();
    return;
  }
  showMessage("signin-message", "Checking…");
  let response;
  try {
    response = await fetch("/v1/me", {headers: {Authorization: `Bearer ${key}`}});
  } catch {
    showMessage("signin-message", "The coscope server did not answer. Is it running?");
    return;
  }
  if (response.status === 401) {
    clearKey();
    showMessage("signin-message", "This API key was not accepted: check it, or ask an admin for a new one.");
    input.select();
    return;
  }
  if (!response.ok) {
    showMessage("signin-message", `The server answered HTTP ${response.status}; try again.`);
    return;
  }
  setKey(key);
  input.value = "";
  location.assign(next);
});
