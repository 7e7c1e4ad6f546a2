// Ingest: files or a folder (picked or dropped) uploaded to a collection,
// with the upload's progress; then the job's five phases live from its
// event stream, and each file that failed with why. Recent and running jobs
// are listed from GET /jobs, so they survive a reload.

import { getJson, readEvents, upload } from "./api.js";
import { append, badge, el, formatBytes, formatTime, message, replace } from "./dom.js";

const ENDED = new Set(["succeeded", "completed_with_errors", "failed", "interrupted"]);

let section = null;
let picked = []; // [{file, name}]
let following = null; // AbortController of the followed job's stream
let jobsTable = null;
let jobPanel = null;
let pickedList = null;

function build(root) {
  section = root;
  const collection = el("input", { name: "collection", list: "ingest-collections", placeholder: "default", pattern: "[A-Za-z0-9_.\\-]{1,64}" });
  const files = el("input", { type: "file", name: "files", multiple: true });
  const folder = el("input", { type: "file", name: "folder", webkitdirectory: true, multiple: true });
  const drop = el("div", { class: "drop", tabindex: 0 }, "Drop files or folders here");
  pickedList = el("p", { class: "picked" }, "Nothing picked yet.");
  const send = el("button", { type: "submit", disabled: true }, "Upload and ingest");
  const form = el(
    "form",
    { class: "ingest-form" },
    el("label", {}, "Collection ", collection, el("datalist", { id: "ingest-collections" })),
    el("label", {}, "Files ", files),
    el("label", {}, "A folder ", folder),
    drop,
    pickedList,
    send,
  );
  const progress = el("div", { class: "upload" });
  jobPanel = el("div", { class: "job" });
  jobsTable = el("div", { class: "jobs" });
  replace(section, el("h1", {}, "Ingest"), form, progress, jobPanel, el("h2", {}, "Recent jobs"), jobsTable);

  const pick = (list) => {
    picked = list;
    send.disabled = picked.length === 0;
    const bytes = picked.reduce((n, p) => n + p.file.size, 0);
    replace(pickedList, picked.length ? `${picked.length} file(s), ${formatBytes(bytes)}: ${picked.slice(0, 8).map((p) => p.name).join(", ")}${picked.length > 8 ? ", …" : ""}` : "Nothing picked yet.");
  };
  files.addEventListener("change", () => pick(Array.from(files.files, (f) => ({ file: f, name: f.name }))));
  folder.addEventListener("change", () => pick(Array.from(folder.files, (f) => ({ file: f, name: f.webkitRelativePath || f.name }))));
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const entries = Array.from(e.dataTransfer.items, (i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
    if (entries.every(Boolean)) pick((await Promise.all(entries.map((en) => walk(en, "")))).flat());
    else pick(Array.from(e.dataTransfer.files, (f) => ({ file: f, name: f.name })));
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!picked.length) return;
    send.disabled = true;
    const data = new FormData();
    if (collection.value.trim()) data.append("collection", collection.value.trim());
    for (const p of picked) data.append("file", p.file, p.name);
    const bar = el("progress", { max: 1, value: 0 });
    const label = el("span", { class: "upload-state", "data-state": "uploading" }, "Uploading…");
    replace(progress, bar, " ", label);
    try {
      const accepted = await upload("/ingest", data, (sent, total) => {
        if (total) bar.value = sent / total;
        label.textContent = `Uploading… ${total ? Math.round((100 * sent) / total) : 0}% of ${formatBytes(total)}`;
      });
      bar.value = 1;
      label.dataset.state = "uploaded";
      label.textContent = `Uploaded ${picked.length} file(s): job ${accepted.job_id} ${accepted.state}. Processing…`;
      follow(accepted.job_id);
      refreshJobs();
    } catch (err) {
      label.dataset.state = "failed";
      replace(progress, message(`The upload was refused: ${err.message}`, "error"));
    } finally {
      send.disabled = false;
    }
  });
}

/** The files under a dropped entry, with their paths relative to the drop. */
async function walk(entry, prefix) {
  if (entry.isFile) return [{ file: await new Promise((ok, fail) => entry.file(ok, fail)), name: prefix + entry.name }];
  const reader = entry.createReader();
  const children = [];
  for (;;) {
    const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
    if (!batch.length) break;
    children.push(...batch);
  }
  return (await Promise.all(children.map((c) => walk(c, `${prefix}${entry.name}/`)))).flat();
}

/** Draws a job: a live view (phases, files) or a stored record (its summary). */
function renderJob(job) {
  const summary = job.summary && typeof job.summary === "object" ? job.summary : {};
  const files = job.files || (summary.files !== undefined ? { total: summary.files, done: summary.files, failed: (summary.failed || []).length } : null);
  const phases = job.phases || [];
  replace(
    jobPanel,
    el("h2", {}, "Job ", el("code", {}, job.id), " ", badge(job.state, `state-${job.state}`)),
    el("p", {}, [job.collection ? `collection ${job.collection}` : null, files ? `files: ${files.done} of ${files.total} done, ${files.failed} failed` : null].filter(Boolean).join(" · ")),
    phases.length
      ? el(
          "table",
          { class: "phases" },
          el("thead", {}, el("tr", {}, ["Phase", "State", "Items", "Seconds"].map((h) => el("th", {}, h)))),
          el(
            "tbody",
            {},
            phases.map((p) =>
              el("tr", { "data-phase": p.phase, "data-state": p.state }, el("td", {}, p.phase), el("td", {}, badge(p.state, `phase-${p.state}`)), el("td", { class: "num" }, p.items), el("td", { class: "num" }, Number(p.seconds).toFixed(2))),
            ),
          ),
        )
      : null,
    summary.documents
      ? el("p", {}, `Documents: ${summary.documents.added} added, ${summary.documents.replaced} replaced, ${summary.documents.unchanged} unchanged; ${summary.chunks} chunks; ${Number(summary.elapsed_seconds || 0).toFixed(2)} s.`)
      : null,
    (summary.failed || []).length
      ? el("div", { class: "failures" }, el("h3", {}, "Files that failed"), el("ul", {}, summary.failed.map((f) => el("li", {}, el("code", {}, f.source), f.location ? ` (${f.location})` : "", `: ${f.error}`))))
      : null,
    (summary.warnings || []).length ? el("details", {}, el("summary", {}, `Warnings (${summary.warnings.length})`), el("ul", {}, summary.warnings.map((w) => el("li", {}, JSON.stringify(w))))) : null,
    job.error || summary.error ? message(job.error || summary.error, "error") : null,
  );
}

/** Follows a job: its event stream while it runs here, else its record until it ends. */
async function follow(id) {
  if (following) following.abort();
  const controller = new AbortController();
  following = controller;
  replace(jobPanel, message(`Job ${id}: waiting for its first event…`));
  try {
    await readEvents(`/jobs/${encodeURIComponent(id)}/events`, (name, data) => {
      renderJob(JSON.parse(data));
      if (name === "done") refreshJobs();
    }, controller.signal);
    return;
  } catch (e) {
    if (controller.signal.aborted) return;
    if (e.status !== 404) return append(jobPanel, message(e.message, "error"));
  }
  // Not running in this process (ended before, or run by another node of a fleet): its record.
  while (!controller.signal.aborted) {
    let job;
    try {
      job = await getJson(`/jobs/${encodeURIComponent(id)}`);
    } catch (e) {
      return replace(jobPanel, message(e.message, "error"));
    }
    renderJob(job);
    if (ENDED.has(job.state)) return refreshJobs();
    await new Promise((ok) => setTimeout(ok, 1000));
  }
}

async function refreshJobs() {
  try {
    const jobs = await getJson("/jobs?limit=20");
    if (!jobs.length) return replace(jobsTable, message("No jobs yet."));
    replace(
      jobsTable,
      el(
        "table",
        {},
        el("thead", {}, el("tr", {}, ["Job", "State", "Collection", "Started", "Files"].map((h) => el("th", {}, h)))),
        el(
          "tbody",
          {},
          jobs.map((j) => {
            const open = el("a", { href: `#/ingest?job=${encodeURIComponent(j.id)}` }, j.id);
            return el(
              "tr",
              { "data-job": j.id },
              el("td", {}, open),
              el("td", {}, badge(j.state, `state-${j.state}`)),
              el("td", {}, j.collection || ""),
              el("td", {}, formatTime(j.created_at)),
              el("td", { class: "num" }, j.files ? `${j.files.done}/${j.files.total}${j.files.failed ? `, ${j.files.failed} failed` : ""}` : ""),
            );
          }),
        ),
      ),
    );
  } catch (e) {
    replace(jobsTable, message(e.message, "error"));
  }
}

export function show(root, { params }) {
  if (!section) build(root);
  getJson("/collections")
    .then((list) => replace(document.getElementById("ingest-collections"), list.map((c) => el("option", { value: c.name }))))
    .catch(() => {});
  refreshJobs();
  const job = params.get("job");
  if (job) follow(job);
}

export function hide() {
  if (following) following.abort();
  following = null;
}
