// Talking to the service: every request carries the API key the person
// entered (kept in sessionStorage: this tab only, gone when it closes).

const KEY = "datafactory.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

/** An answer that was not 2xx: its status and the service's `error`. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Called when the service answers 401: the page asks for a key. */
let onUnauthorized = () => {};
export function whenUnauthorized(f) {
  onUnauthorized = f;
}

function headers(extra = {}) {
  const h = new Headers(extra);
  const key = apiKey();
  if (key) h.set("Authorization", `Bearer ${key}`);
  return h;
}

async function failure(response) {
  let text = response.statusText;
  try {
    const body = await response.json();
    if (body && body.error) text = body.error;
  } catch {
    // not JSON: the status text says enough
  }
  if (response.status === 401) onUnauthorized(text);
  return new ApiError(response.status, `${response.status}: ${text}`);
}

/** fetch with the key; throws ApiError on a status other than 2xx (and 304). */
export async function request(path, { method = "GET", json, signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (json !== undefined) {
    init.headers.set("Content-Type", "application/json");
    init.body = JSON.stringify(json);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJson(path, options) {
  return (await request(path, options)).json();
}

/** Reads a Server-Sent Events stream with fetch (EventSource cannot send the
 *  key header), calling `onEvent(name, data)` for each event until it ends. */
export async function readEvents(path, onEvent, signal) {
  const response = await request(path, { signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

/** POSTs a form with XMLHttpRequest (fetch reports no upload progress),
 *  calling `onProgress(sent, total)`; resolves with the JSON answer. */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    const key = apiKey();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded, e.lengthComputable ? e.total : 0));
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // not JSON
      }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const text = (body && body.error) || xhr.statusText;
      if (xhr.status === 401) onUnauthorized(text);
      reject(new ApiError(xhr.status, `${xhr.status}: ${text}`));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "the upload failed: the service cannot be reached")));
    xhr.send(form);
  });
}
