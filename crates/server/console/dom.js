// Building the page from data. Every piece of text goes in as a text node
// (textContent): ingested documents are untrusted, so nothing here ever
// parses a string as HTML.

/** An element: `el("a", {href: "#/x", class: "link"}, "text", child, ...)`.
 *  Attributes are set with setAttribute (never event handlers); children are
 *  nodes or strings (strings become text nodes); null and false are skipped. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) throw new Error(`no inline handlers: ${name}`);
    node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, ...children);
  return node;
}

export function append(node, ...children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Empties `node` and fills it with `children`. */
export function replace(node, ...children) {
  node.replaceChildren();
  return append(node, ...children);
}

/** `text` with the `[start, end)` character ranges in `ranges` wrapped in
 *  <mark>. Ranges count Unicode characters, as the server does, so the text
 *  is split by code point (Array.from), not by UTF-16 unit. */
export function highlighted(text, ranges) {
  const chars = Array.from(text);
  const out = [];
  let at = 0;
  for (const [start, end] of ranges || []) {
    if (start < at || end > chars.length || start >= end) continue;
    if (start > at) out.push(chars.slice(at, start).join(""));
    out.push(el("mark", {}, chars.slice(start, end).join("")));
    at = end;
  }
  if (at < chars.length) out.push(chars.slice(at).join(""));
  return out;
}

/** A horizontal bar of `fraction` (0-1) of its track. Its width is set
 *  through the CSS object model, which the page's policy allows (an inline
 *  style attribute it would not). */
export function bar(fraction, cls = "") {
  const fill = el("span", { class: "fill" });
  fill.style.width = `${Math.max(0, Math.min(1, fraction || 0)) * 100}%`;
  return el("span", { class: `bar ${cls}` }, fill);
}

export function badge(text, cls = "") {
  return el("span", { class: `badge ${cls}` }, text);
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function formatTime(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

/** A message line: `kind` is "error", "note" or "ok". */
export function message(text, kind = "note") {
  return el("p", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/** A definition list from [term, value] pairs (values: strings or nodes; empty ones left out). */
export function facts(pairs) {
  const dl = el("dl", { class: "facts" });
  for (const [term, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    append(dl, el("dt", {}, term), el("dd", {}, value));
  }
  return dl;
}
