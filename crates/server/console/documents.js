// Documents: the list (filtered by collection, type, language and format,
// a page at a time), and one document with its metadata, its analysis and
// its chunks in order; deleting one asks first.

import { getJson, request } from "./api.js";
import { append, badge, el, facts, formatBytes, formatTime, message, replace } from "./dom.js";

const PAGE = 25;
const TYPES = ["prose", "manual", "source_code", "legal", "academic", "slides", "data", "conversation"];
const FORMATS = ["text", "markdown", "html", "pdf", "docx", "jsonl"];

function options(values, none) {
  return [el("option", { value: "" }, none), ...values.map((v) => el("option", { value: v }, v))];
}

function listAddress(filters, page) {
  const p = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
  if (page > 0) p.set("page", page);
  const q = p.toString();
  return `#/documents${q ? `?${q}` : ""}`;
}

async function showList(section, params) {
  const filters = {
    collection: params.get("collection") || "",
    type: params.get("type") || "",
    language: params.get("language") || "",
    format: params.get("format") || "",
  };
  const page = Math.max(0, Number(params.get("page")) || 0);
  const form = el(
    "form",
    { class: "filters-row" },
    el("label", {}, "Collection ", el("select", { name: "collection" }, options([], "all"))),
    el("label", {}, "Type ", el("select", { name: "type" }, options(TYPES, "any"))),
    el("label", {}, "Language ", el("input", { name: "language", size: 5, placeholder: "eng", pattern: "[a-z]{3}" })),
    el("label", {}, "Format ", el("select", { name: "format" }, options(FORMATS, "any"))),
    el("button", { type: "submit" }, "Filter"),
  );
  for (const [k, v] of Object.entries(filters)) form.elements[k].value = v;
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const f = form.elements;
    location.hash = listAddress({ collection: f.collection.value, type: f.type.value, language: f.language.value.trim(), format: f.format.value }, 0);
  });
  const body = el("div", {}, message("Loading…"));
  replace(section, el("h1", {}, "Documents"), form, body);
  getJson("/collections")
    .then((list) => {
      for (const c of list) form.elements.collection.append(el("option", { value: c.name }, `${c.name} (${c.documents})`));
      form.elements.collection.value = filters.collection;
    })
    .catch(() => {});

  const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
  query.set("limit", PAGE);
  query.set("offset", page * PAGE);
  try {
    const response = await request(`/documents?${query}`);
    const total = Number(response.headers.get("X-Total-Count") || 0);
    const docs = await response.json();
    if (!docs.length) return replace(body, message(total ? "No documents on this page." : "No documents. Ingest some first.", "note"));
    const table = el(
      "table",
      { class: "documents" },
      el("thead", {}, el("tr", {}, ["Title", "Collection", "Source", "Format", "Type", "Language", "Chunks", "Size", "Updated"].map((h) => el("th", {}, h)))),
      el(
        "tbody",
        {},
        docs.map((d) =>
          el(
            "tr",
            { "data-id": d.id },
            el("td", {}, el("a", { href: `#/documents/${encodeURIComponent(d.id)}` }, d.title || d.source)),
            el("td", {}, d.collection),
            el("td", { class: "source" }, d.source),
            el("td", {}, d.format),
            el("td", {}, d.doc_type || ""),
            el("td", {}, d.language || ""),
            el("td", { class: "num" }, d.chunks),
            el("td", { class: "num" }, formatBytes(d.byte_size)),
            el("td", {}, formatTime(d.updated_at)),
          ),
        ),
      ),
    );
    const first = page * PAGE + 1;
    const pager = el(
      "nav",
      { class: "pager", "aria-label": "Pages" },
      page > 0 ? el("a", { href: listAddress(filters, page - 1), rel: "prev" }, "← previous") : null,
      el("span", {}, `${first}–${first + docs.length - 1} of ${total}`),
      first + docs.length - 1 < total ? el("a", { href: listAddress(filters, page + 1), rel: "next" }, "next →") : null,
    );
    replace(body, table, pager);
  } catch (e) {
    replace(body, message(e.message, "error"));
  }
}

function analysisFacts(a) {
  if (!a) return message("No analysis recorded for this document.");
  const plan = a.plan || {};
  return el(
    "div",
    { class: "analysis" },
    facts([
      ["Type", `${a.doc_type} (confidence ${Number(a.confidence).toFixed(2)})`],
      ["Language", a.language ? `${a.language.name} (${a.language.code})${a.language.reliable ? "" : ", unsure"}` : "none found"],
      ["Decided by", `${a.route}: ${a.analyzer}`],
      ["Why", a.reason],
      ["Fallback", a.fallback],
      ["Plan", [plan.strategy, plan.max_tokens ? `${plan.max_tokens} tokens` : null, plan.overlap_tokens ? `${plan.overlap_tokens} overlap` : null].filter(Boolean).join(", ")],
      ["Estimated tokens", a.estimated_tokens],
    ]),
    a.signals && a.signals.length
      ? el("details", {}, el("summary", {}, `Signals (${a.signals.length})`), el("ul", {}, a.signals.map((s) => el("li", {}, `${s.name} = ${Number(s.value).toFixed(3)} (weight ${Number(s.weight).toFixed(2)})`))))
      : null,
  );
}

function chunkCard(c) {
  return el(
    "article",
    { class: "chunk", id: `chunk-${c.id}`, "data-chunk": c.id },
    el(
      "header",
      {},
      el("span", { class: "rank" }, `#${c.ordinal}`),
      el("span", {}, c.heading_path.length ? c.heading_path.join(" › ") : "(no heading)"),
      el("span", { class: "where" }, [c.page ? `page ${c.page}` : null, `${c.token_count} tokens`, `chars ${c.start}–${c.end}`].filter(Boolean).join(" · ")),
    ),
    c.context
      ? el(
          "p",
          { class: "context" },
          badge(c.context.kind === "llm" ? `LLM context${c.context.model ? ` (${c.context.model})` : ""}` : "heuristic context", c.context.kind),
          " ",
          c.context.text,
        )
      : null,
    el("p", { class: "text" }, c.text),
  );
}

async function showDocument(section, id, params) {
  replace(section, message("Loading…"));
  let d;
  try {
    d = await getJson(`/documents/${encodeURIComponent(id)}`);
  } catch (e) {
    return replace(section, el("p", {}, el("a", { href: "#/documents" }, "← documents")), message(e.message, "error"));
  }
  const metadata = { ...d.metadata };
  const analysis = metadata.analysis;
  delete metadata.analysis;
  const confirmBox = el("div", { class: "confirm", hidden: true });
  const del = el("button", { type: "button", class: "danger" }, "Delete…");
  del.addEventListener("click", () => {
    confirmBox.hidden = false;
    const yes = el("button", { type: "button", class: "danger", "data-confirm": "delete" }, "Delete it");
    const no = el("button", { type: "button" }, "Keep it");
    replace(confirmBox, el("p", {}, `Delete “${d.title || d.source}” and its ${d.chunks.length} chunks from every index? This cannot be undone.`), yes, " ", no);
    no.addEventListener("click", () => (confirmBox.hidden = true));
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      try {
        await request(`/documents/${encodeURIComponent(d.id)}`, { method: "DELETE" });
        replace(section, message(`Deleted “${d.title || d.source}”.`, "ok"), el("p", {}, el("a", { href: "#/documents" }, "← documents")));
      } catch (e) {
        append(confirmBox, message(e.message, "error"));
      }
    });
  });
  replace(
    section,
    el("p", {}, el("a", { href: "#/documents" }, "← documents")),
    el("h1", {}, d.title || d.source),
    el("div", { class: "tools" }, del),
    confirmBox,
    el(
      "div",
      { class: "document-head" },
      el(
        "section",
        {},
        el("h2", {}, "Document"),
        facts([
          ["Id", d.id],
          ["Collection", d.collection],
          ["Source", d.source],
          ["Input id", d.external_id],
          ["Format", d.format],
          ["Size", formatBytes(d.byte_size)],
          ["Version", d.version],
          ["Stored", formatTime(d.created_at)],
          ["Updated", formatTime(d.updated_at)],
          ["Chunks", d.chunks.length],
        ]),
        Object.keys(metadata).length ? el("details", {}, el("summary", {}, "Metadata"), el("pre", {}, JSON.stringify(metadata, null, 2))) : null,
      ),
      el("section", {}, el("h2", {}, "Analysis"), analysisFacts(analysis)),
    ),
    el("h2", {}, `Chunks (${d.chunks.length})`),
    el("div", { class: "chunks" }, d.chunks.map(chunkCard)),
  );
  const target = params.get("chunk");
  if (target) {
    const node = document.getElementById(`chunk-${target}`);
    if (node) {
      node.classList.add("focus");
      node.scrollIntoView({ block: "center" });
    } else {
      section.insertBefore(message("That chunk is no longer in this document (it was replaced).", "note"), section.children[2]);
    }
  }
}

export function show(section, { rest, params }) {
  if (rest.length && rest[0]) showDocument(section, rest[0], params);
  else showList(section, params);
}
