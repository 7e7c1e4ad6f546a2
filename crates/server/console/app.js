// The console's frame: the key prompt, the views and the address bar.
// Each view lives in its own module with `show(section, params)` (called
// whenever the address names it) and optionally `hide()`.
//
// Addresses: #/search?q=…, #/documents, #/documents/<id>?chunk=<chunk id>,
// #/ingest, #/system.

import { apiKey, getJson, setApiKey, whenUnauthorized } from "./api.js";
import * as search from "./search.js";
import * as documents from "./documents.js";
import * as ingest from "./ingest.js";
import * as system from "./system.js";

const views = { search, documents, ingest, system };
let current = null;

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = hash.split("?");
  const [view, ...rest] = path.split("/");
  return { view: views[view] ? view : "search", rest: rest.map(decodeURIComponent), params: new URLSearchParams(query) };
}

function route() {
  const { view, rest, params } = parseHash();
  if (current && current !== view && views[current].hide) views[current].hide();
  current = view;
  for (const name of Object.keys(views)) {
    document.getElementById(`view-${name}`).hidden = name !== view;
  }
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  views[view].show(document.getElementById(`view-${view}`), { rest, params });
}

function askForKey(reason) {
  const prompt = document.getElementById("key-prompt");
  const error = document.getElementById("key-error");
  error.hidden = !apiKey();
  error.textContent = apiKey() ? `That key was refused (${reason}).` : "";
  prompt.hidden = false;
  document.getElementById("main").hidden = true;
  document.getElementById("key-input").focus();
}

/** Asks /ready whether we may talk to the service (and whether a key is needed). */
async function start() {
  const status = document.getElementById("status");
  try {
    await getJson("/ready");
  } catch (e) {
    if (e.status === 401) return; // the prompt is showing
    status.textContent = `The service does not answer: ${e.message}`;
  }
  document.getElementById("key-prompt").hidden = true;
  document.getElementById("main").hidden = false;
  document.getElementById("forget-key").hidden = !apiKey();
  route();
}

whenUnauthorized(askForKey);
document.getElementById("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setApiKey(document.getElementById("key-input").value.trim());
  document.getElementById("key-input").value = "";
  start();
});
document.getElementById("forget-key").addEventListener("click", () => {
  setApiKey("");
  location.reload();
});
window.addEventListener("hashchange", route);
start();
