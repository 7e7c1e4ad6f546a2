// System: what /ready and /metrics say — the store and whether its indexes
// agree, the embedder, the reranker and its workers, every LLM endpoint
// (up or down, in the pool, tokens cached and evaluated), the fleet on
// PostgreSQL — and, where `datafactory up` started the service, what
// /deployment says: each service's process and health, each GPU's memory,
// utilisation and temperature. Refreshed every few seconds while the view
// is open.

import { getJson, request } from "./api.js";
import { append, badge, bar, el, facts, message, replace } from "./dom.js";

const EVERY_MS = 5000;
let timer = null;
let root = null;

/** Prometheus text → [{name, labels, value}] (samples only; comments skipped). */
export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[3] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v.replace(/\\(.)/g, "$1");
    samples.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return samples;
}

function sum(samples, name, match = () => true) {
  return samples.filter((s) => s.name === name && match(s.labels)).reduce((n, s) => n + s.value, 0);
}

function upDown(value) {
  if (value === true) return badge("up", "up");
  if (value === false) return badge("down", "down");
  return badge("unknown", "");
}

function workersTable(workers) {
  if (!workers || !workers.length) return null;
  return el(
    "table",
    { class: "workers" },
    el("thead", {}, el("tr", {}, ["Worker", "In pool", "Failures in a row", "Requests", "Failed"].map((h) => el("th", {}, h)))),
    el("tbody", {}, workers.map((w) => el("tr", {}, el("td", {}, w.url), el("td", {}, w.in_pool ? "yes" : "no"), el("td", { class: "num" }, w.consecutive_failures), el("td", { class: "num" }, w.requests), el("td", { class: "num" }, w.failures)))),
  );
}

function mib(n) {
  return n >= 1024 ? `${(n / 1024).toFixed(1)} GiB` : `${n} MiB`;
}

/** A GPU's memory and utilisation as bars, its temperature, its processes. */
function gpuCard(g, services) {
  const users = services.filter((s) => s.gpu === g.index).map((s) => s.name);
  return el(
    "section",
    { class: "card gpu", "data-gpu": g.index },
    el("h3", {}, `GPU ${g.index}: ${g.name}`),
    el("div", { class: "meter" }, el("span", {}, "Memory"), bar(g.memory_total_mib ? g.memory_used_mib / g.memory_total_mib : 0, "memory"), el("span", { class: "value" }, `${mib(g.memory_used_mib)} of ${mib(g.memory_total_mib)}`)),
    el("div", { class: "meter" }, el("span", {}, "Utilisation"), bar((g.utilization_percent ?? 0) / 100, "utilization"), el("span", { class: "value" }, g.utilization_percent === null ? "unknown" : `${g.utilization_percent} %`)),
    facts([
      ["Temperature", g.temperature_c === null ? "unknown" : `${g.temperature_c} °C`],
      ["Services", users.join(", ") || "none of this deployment"],
      ["Processes", g.processes.length ? g.processes.map((p) => `${p.pid}${p.memory_used_mib !== null ? ` (${mib(p.memory_used_mib)})` : ""}`).join(", ") : "none"],
    ]),
  );
}

/** What `datafactory up` runs: its services, then its GPUs. */
function renderDeployment(view) {
  const part = (...children) => el("section", { class: "card wide", "data-part": "deployment", "data-launched": String(view.launched) }, el("h2", {}, "Deployment"), ...children);
  if (!view.launched) return part(message("Not started by `datafactory up`: there is no deployment to show here (`datafactory status` shows one).", "note"));
  const d = view.status;
  if (!d) return part(message(view.note, "error"));
  const phase = d.phase === "up" ? "up" : d.phase === "failed" ? "down" : "";
  return part(
    facts([
      ["Deployment file", d.deployment],
      ["Launcher", [badge(d.phase || "no state", phase), d.launcher_pid ? ` PID ${d.launcher_pid}` : " not running"]],
      ["Why it failed", d.error],
      ["State file", d.state_file],
    ]),
    el(
      "table",
      { class: "services" },
      el("thead", {}, el("tr", {}, ["Service", "Kind", "GPU", "Address", "PID", "Health", "Restarts", "Last exit", "GPU memory"].map((h) => el("th", {}, h)))),
      el(
        "tbody",
        {},
        d.services.map((s) =>
          el(
            "tr",
            { "data-service": s.name, "data-health": s.health === "ok" ? "ok" : "down" },
            el("td", {}, s.name),
            el("td", {}, s.kind),
            el("td", { class: "num" }, s.gpu ?? "none"),
            el("td", {}, s.url),
            el("td", { class: "num" }, s.pid ?? ""),
            el("td", {}, s.health === "ok" ? badge("up", "up") : badge(s.health, "down")),
            el("td", { class: "num" }, s.restarts),
            el("td", {}, s.last_exit || ""),
            el("td", { class: "num" }, s.gpu_memory_used_mib !== null ? `${mib(s.gpu_memory_used_mib)} / ${mib(s.gpu_memory_total_mib)}` : ""),
          ),
        ),
      ),
    ),
    el("h3", {}, d.gpu.driver ? `GPUs (driver ${d.gpu.driver})` : "GPUs"),
    d.gpu.error ? message(`No GPU figures: ${d.gpu.error}`, "note") : null,
    d.gpu.gpus.length ? el("div", { class: "cards" }, d.gpu.gpus.map((g) => gpuCard(g, d.services))) : null,
  );
}

function render(ready, samples, deployment) {
  const s = ready.store;
  const e = ready.embedding;
  const r = ready.rerank;
  const n = ready.enrichment;
  const llm = (name, url) => sum(samples, name, (l) => l.url === url);
  return [
    el("h1", {}, "System ", badge(ready.ready ? "ready" : "not ready", ready.ready ? "up" : "down")),
    el(
      "div",
      { class: "cards" },
      el(
        "section",
        { class: "card", "data-part": "store" },
        el("h2", {}, "Store"),
        facts([
          ["Open", s.open ? "yes" : "no"],
          ["Indexes agree with the store", s.consistent === null ? "unknown" : s.consistent ? "yes" : badge("no: see datafactory stats", "down")],
          ["Documents", s.documents],
          ["Chunks", s.chunks],
          ["Documents ingested (this process)", sum(samples, "datafactory_documents_ingested_total")],
          ["Ingest failures (this process)", sum(samples, "datafactory_ingest_failures_total")],
        ]),
      ),
      el(
        "section",
        { class: "card", "data-part": "embedding" },
        el("h2", {}, "Embedder"),
        facts([
          ["Model", e.loaded ? e.model : badge("none: searches use words only", "down")],
          ["Device (as configured)", e.device],
          ["Why none", e.note],
          ["Batches", sum(samples, "datafactory_embed_batches_total")],
          ["Texts", sum(samples, "datafactory_embed_texts_total")],
          ["Tokens (padded)", `${sum(samples, "datafactory_embed_tokens_total")} (${sum(samples, "datafactory_embed_padded_tokens_total")})`],
          ["GPU→CPU fallbacks", sum(samples, "datafactory_embed_gpu_fallbacks_total")],
          ["Searches by words only (no vectors)", sum(samples, "datafactory_searches_words_only_total")],
        ]),
        workersTable(e.workers),
      ),
      el(
        "section",
        { class: "card", "data-part": "rerank" },
        el("h2", {}, "Reranker"),
        facts([
          ["Mode", r.mode],
          ["Model", r.model],
          ["Searches reranked", sum(samples, "datafactory_searches_reranked_total")],
          ["Reranker failures (fused order kept)", sum(samples, "datafactory_rerank_failures_total")],
        ]),
        workersTable(r.workers),
      ),
    ),
    el(
      "section",
      { class: "card wide", "data-part": "enrichment" },
      el("h2", {}, `Enrichment: ${n.mode}`),
      n.endpoints.length
        ? el(
            "table",
            { class: "endpoints" },
            el("thead", {}, el("tr", {}, ["Endpoint", "Kind", "Model", "Health", "In pool", "Failures in a row", "Requests", "Answers no context", "Tokens cached / evaluated", "Error"].map((h) => el("th", {}, h)))),
            el(
              "tbody",
              {},
              n.endpoints.map((p) =>
                el(
                  "tr",
                  { "data-url": p.url, "data-up": String(p.up) },
                  el("td", {}, p.url),
                  el("td", {}, p.kind),
                  el("td", {}, p.model),
                  el("td", {}, upDown(p.up)),
                  el("td", {}, p.in_pool ? "yes" : p.retry_in_seconds ? `no (back in ${Math.ceil(p.retry_in_seconds)} s)` : "no"),
                  el("td", { class: "num" }, p.consecutive_failures),
                  el("td", { class: "num" }, llm("datafactory_llm_requests_total", p.url)),
                  el("td", { class: "num", title: "answers refused: an echo of the prompt, a copy or a loop (a base model, a wrong chat template)" }, llm("datafactory_llm_unusable_answers_total", p.url)),
                  el("td", { class: "num" }, `${llm("datafactory_llm_cached_tokens_total", p.url)} / ${llm("datafactory_llm_evaluated_tokens_total", p.url)}`),
                  el("td", { class: "error" }, p.error || ""),
                ),
              ),
            ),
          )
        : message(n.mode === "off" ? "Enrichment is off: chunks get no context." : "No LLM endpoint: chunks get contexts from the document's structure."),
      el("p", {}, ["llm", "cached", "heuristic", "fallback"].map((k) => `${k} contexts: ${sum(samples, "datafactory_chunk_contexts_total", (l) => l.kind === k)}`).join(" · ")),
    ),
    renderDeployment(deployment),
    ready.fleet
      ? el(
          "section",
          { class: "card wide", "data-part": "fleet" },
          el("h2", {}, "Fleet"),
          el("p", {}, `Queue: ${ready.fleet.queued} queued, ${ready.fleet.running} running, ${ready.fleet.lease_expired} with an expired lease.`),
          el(
            "table",
            {},
            el("thead", {}, el("tr", {}, ["Node", "Address", "Alive", "Running job", "Last seen"].map((h) => el("th", {}, h)))),
            el("tbody", {}, ready.fleet.nodes.map((f) => el("tr", {}, el("td", {}, f.id), el("td", {}, f.address), el("td", {}, upDown(f.alive)), el("td", {}, f.running_job || ""), el("td", {}, new Date(f.seen_at).toLocaleTimeString())))),
          ),
        )
      : null,
    el("p", { class: "refreshed" }, `Refreshed ${new Date().toLocaleTimeString()}, every ${EVERY_MS / 1000} s.`),
  ];
}

async function refresh() {
  try {
    const [ready, metrics, deployment] = await Promise.all([getJson("/ready"), request("/metrics").then((r) => r.text()), getJson("/deployment")]);
    if (root && !root.hidden) replace(root, ...render(ready, parseMetrics(metrics), deployment));
  } catch (e) {
    // The last view stays, under one line saying why it is not refreshed.
    if (!root) return;
    const line = root.querySelector(".refresh-error") || append(root, el("p", { class: "message error refresh-error", role: "alert" })).lastChild;
    line.textContent = `Not refreshed: ${e.message}`;
  }
}

export function show(section) {
  root = section;
  if (!section.childElementCount) replace(section, message("Loading…"));
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, EVERY_MS);
}

export function hide() {
  clearInterval(timer);
  timer = null;
}
