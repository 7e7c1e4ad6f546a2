// The search playground: one query in one mode, or in two modes side by
// side; each hit with its highlighted text, its context and who wrote it,
// and every stage's score as a bar with each retriever's rank.

import { apiKey, getJson } from "./api.js";
import { append, badge, bar, el, highlighted, message, replace } from "./dom.js";

const MODES = ["hybrid", "lexical", "dense", "sparse"];
/** The stages a hit can have a score from, in pipeline order. */
const STAGES = ["words", "dense", "sparse", "fused", "rerank"];
/** Stages whose scores are on a fixed 0-1 scale; the others are drawn relative to the best hit. */
const ABSOLUTE = new Set(["dense", "rerank"]);

let form = null;
let results = null;
let curlBox = null;

function select(name, options, label) {
  return el("label", {}, label, el("select", { name }, options.map(([value, text]) => el("option", { value }, text))));
}

function build(section) {
  form = el(
    "form",
    { class: "search-form", role: "search" },
    el("input", { type: "search", name: "q", placeholder: "Ask or type words…", "aria-label": "Query", required: true, autofocus: true }),
    el("button", { type: "submit" }, "Search"),
    el(
      "div",
      { class: "options" },
      select("mode", MODES.map((m) => [m, m]), "Mode "),
      el("label", {}, el("input", { type: "checkbox", name: "compare" }), " compare with "),
      select("mode_b", MODES.map((m) => [m, m]), ""),
      el("label", {}, "Top ", el("input", { type: "number", name: "top_k", min: 1, max: 1000, value: 10 })),
      select("collection", [["", "all collections"]], "Collection "),
      select("rerank", [["", "default"], ["true", "on"], ["false", "off"]], "Rerank "),
    ),
    el(
      "details",
      { class: "filters" },
      el("summary", {}, "Filters"),
      el("label", {}, "Metadata, one key=value a line ", el("textarea", { name: "metadata", rows: 2, placeholder: "topic=animals" })),
      el("label", {}, "Document ids, comma-separated ", el("input", { type: "text", name: "document_ids" })),
    ),
  );
  form.elements.mode_b.value = "lexical";
  const curlButton = el("button", { type: "button", class: "quiet copy-curl" }, "Copy as curl");
  curlBox = el("pre", { class: "curl", hidden: true });
  results = el("div", { class: "results" });
  replace(section, el("h1", { class: "visually-hidden" }, "Search"), form, el("div", { class: "tools" }, curlButton), curlBox, results);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const hash = `#/search?${new URLSearchParams(formState()).toString()}`;
    if (location.hash === hash) run();
    else location.hash = hash;
  });
  curlButton.addEventListener("click", copyCurl);
  getJson("/collections")
    .then((list) => {
      for (const c of list) form.elements.collection.append(el("option", { value: c.name }, `${c.name} (${c.documents})`));
      form.elements.collection.value = pending.collection || "";
    })
    .catch(() => {});
}

let pending = {};

/** The form as flat strings (what the address keeps). */
function formState() {
  const f = form.elements;
  const state = { q: f.q.value, mode: f.mode.value, top_k: f.top_k.value };
  if (f.compare.checked) state.compare = f.mode_b.value;
  if (f.collection.value) state.collection = f.collection.value;
  if (f.rerank.value) state.rerank = f.rerank.value;
  if (f.metadata.value.trim()) state.metadata = f.metadata.value.trim();
  if (f.document_ids.value.trim()) state.document_ids = f.document_ids.value.trim();
  return state;
}

function fill(params) {
  const f = form.elements;
  pending = Object.fromEntries(params.entries());
  f.q.value = pending.q || "";
  f.mode.value = MODES.includes(pending.mode) ? pending.mode : "hybrid";
  f.compare.checked = MODES.includes(pending.compare);
  if (f.compare.checked) f.mode_b.value = pending.compare;
  f.top_k.value = pending.top_k || 10;
  f.collection.value = pending.collection || "";
  f.rerank.value = pending.rerank || "";
  f.metadata.value = pending.metadata || "";
  f.document_ids.value = pending.document_ids || "";
}

/** The POST /search body for `mode`. */
function body(mode) {
  const s = formState();
  const b = { query: s.q, mode, top_k: Number(s.top_k) || 10 };
  if (s.collection) b.collection = s.collection;
  if (s.rerank) b.rerank = s.rerank === "true";
  const filter = {};
  if (s.metadata) {
    filter.metadata = {};
    for (const line of s.metadata.split("\n")) {
      const at = line.indexOf("=");
      if (at < 1) throw new Error(`a metadata filter is key=value: ${JSON.stringify(line)}`);
      const raw = line.slice(at + 1).trim();
      let value = raw;
      try {
        value = JSON.parse(raw); // numbers, true/false, quoted strings
      } catch {
        // a bare string
      }
      filter.metadata[line.slice(0, at).trim()] = value;
    }
  }
  if (s.document_ids) filter.document_ids = s.document_ids.split(",").map((x) => x.trim()).filter(Boolean);
  if (Object.keys(filter).length) b.filter = filter;
  return b;
}

function modes() {
  const s = formState();
  return s.compare ? [s.mode, s.compare] : [s.mode];
}

async function run() {
  // A command copied for the previous search no longer matches the form.
  curlBox.hidden = true;
  curlBox.textContent = "";
  if (!form.elements.q.value.trim()) return replace(results);
  let bodies;
  try {
    bodies = modes().map(body);
  } catch (e) {
    return replace(results, message(e.message, "error"));
  }
  replace(results, message("Searching…"));
  const answers = await Promise.all(
    bodies.map((b) => getJson("/search", { method: "POST", json: b }).catch((e) => ({ error: e.message, mode: b.mode }))),
  );
  const columns = answers.map((a, i) => column(a, answers[1 - i]));
  replace(results, ...columns);
  results.classList.toggle("compare", columns.length > 1);
}

/** One answer's column; `other` is the other mode's answer when comparing. */
function column(answer, other) {
  const col = el("section", { class: "column", "data-mode": answer.mode });
  if (answer.error) return append(col, el("h2", {}, answer.mode), message(answer.error, "error"));
  const otherRanks = new Map((other && other.results ? other.results : []).map((h, i) => [h.chunk_id, i + 1]));
  append(
    col,
    el(
      "h2",
      {},
      `${answer.mode} `,
      el("small", {}, `${answer.results.length} results, ${answer.took_ms.toFixed(1)} ms, retrievers: ${answer.retrievers.join(", ") || "none"}`),
    ),
    rerankLine(answer.rerank),
    answer.notes.map((n) => message(n, "note")),
    answer.results.length ? null : message("No results."),
  );
  const maxima = {};
  for (const stage of STAGES) maxima[stage] = Math.max(0, ...answer.results.map((h) => h.scores[stage] ?? 0));
  answer.results.forEach((hit, i) => append(col, hitCard(hit, i + 1, maxima, other ? [other.mode, otherRanks.get(hit.chunk_id)] : null)));
  return col;
}

/** Whether the reranker reordered the hits: asked for and failed is not "reranked". */
function rerankLine(rerank) {
  if (!rerank) return null;
  const model = rerank.model || "the reranker";
  if (rerank.reranked) return el("p", { class: "message note reranked", role: "status" }, `Reranked by ${model}: ${rerank.candidates ?? ""} candidates`);
  return el("p", { class: "message error not-reranked", role: "alert" }, `Not reranked (${model} failed): the hits are in fused order`);
}

function hitCard(hit, rank, maxima, compared) {
  const link = `#/documents/${encodeURIComponent(hit.document_id)}?chunk=${encodeURIComponent(hit.chunk_id)}`;
  const where = [hit.collection, hit.heading_path.length ? hit.heading_path.join(" › ") : null, hit.page ? `page ${hit.page}` : null, `chunk ${hit.ordinal}`];
  return el(
    "article",
    { class: "hit", "data-chunk": hit.chunk_id },
    el("header", {}, el("span", { class: "rank" }, `${rank}`), el("a", { class: "title", href: link }, hit.title || hit.source), el("span", { class: "source" }, hit.source)),
    el("p", { class: "where" }, where.filter(Boolean).join(" · ")),
    scores(hit, maxima),
    el("p", { class: "text" }, highlighted(hit.text, hit.highlights)),
    hit.context
      ? el("p", { class: "context" }, badge(hit.context_kind === "llm" ? "LLM context" : "heuristic context", hit.context_kind || ""), " ", hit.context)
      : null,
    compared ? el("p", { class: "other" }, compared[1] ? `#${compared[1]} in ${compared[0]}` : `not in ${compared[0]}'s results`) : null,
    duplicatesLine(hit),
  );
}

/** The other documents holding the same passage (a collapsed duplicate), each a link to its chunk. */
function duplicatesLine(hit) {
  const dups = hit.duplicates || [];
  if (!dups.length) return null;
  const links = [];
  for (const d of dups) {
    if (links.length) links.push(", ");
    links.push(el("a", { href: `#/documents/${encodeURIComponent(d.document_id)}?chunk=${encodeURIComponent(d.chunk_id)}` }, d.title || d.source));
  }
  const more = (hit.duplicate_count || dups.length) - dups.length;
  return el("p", { class: "duplicates" }, `Also in ${hit.duplicate_count || dups.length}: `, ...links, more > 0 ? ` and ${more} more` : "");
}

function scores(hit, maxima) {
  const table = el("div", { class: "scores" });
  for (const stage of STAGES) {
    const value = hit.scores[stage];
    if (value === undefined || value === null) continue;
    const fraction = ABSOLUTE.has(stage) ? value : maxima[stage] > 0 ? value / maxima[stage] : 0;
    const place = hit.scores.ranks ? hit.scores.ranks[stage] : undefined;
    append(
      table,
      el("span", { class: "stage" }, stage),
      bar(fraction, stage),
      el("span", { class: "value" }, value.toFixed(stage === "fused" ? 4 : 3)),
      el("span", { class: "place" }, place ? `#${place}` : ""),
    );
  }
  return table;
}

function quote(s) {
  return `'${s.replaceAll("'", "'\\''")}'`;
}

async function copyCurl() {
  let commands;
  try {
    commands = modes().map((mode) => {
      const parts = ["curl -s -X POST", quote(`${location.origin}/search`), "-H 'Content-Type: application/json'"];
      if (apiKey()) parts.push('-H "Authorization: Bearer $DATAFACTORY_API_KEY"');
      parts.push("-d", quote(JSON.stringify(body(mode))));
      return parts.join(" ");
    });
  } catch (e) {
    curlBox.hidden = false;
    curlBox.textContent = e.message;
    return;
  }
  const text = commands.join("\n");
  curlBox.hidden = false;
  curlBox.textContent = text;
  try {
    await navigator.clipboard.writeText(text);
    curlBox.dataset.copied = "yes";
  } catch {
    curlBox.dataset.copied = "no"; // no clipboard here (not a secure context): the command is shown to copy by hand
  }
}

export function show(section, { params }) {
  if (!form) build(section);
  fill(params);
  run();
}
