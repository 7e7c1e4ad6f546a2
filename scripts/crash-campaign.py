#!/usr/bin/env python3
"""Crash campaign (issue 17): SIGKILL `datafactory ingest` and `datafactory serve`
at random moments, on the embedded store or PostgreSQL, and check after each
kill that no acknowledged document was lost, that no visible document is half
stored, that `stats` is consistent, and that the re-ingest finishes the rest
without asking the LLM again for a context the store already kept.

Python 3 standard library only. Usage (see docs/RELIABILITY.md, "Crash campaign"):

    # with DATAFACTORY_TEST_LLAMA_SERVER, _TINY_GGUF, _MINILM, _POSTGRES set as .ci/run sets them
    scripts/crash-campaign.py --store embedded --kills 50 --seed 1 --scratch /tmp/crash
    scripts/crash-campaign.py --bin target/release/datafactory --store postgres \
        --postgres-url "$DATAFACTORY_TEST_POSTGRES" --kills 50 --seed 1 --scratch /tmp/crash-pg

How it works, per kill ("trial"), in a fresh store (a data folder, or a
PostgreSQL schema of a database created for the run):

1. A *profile* is drawn: `words` (heuristic contexts, no model: fast, the
   biggest corpus), `llm` (contexts from a real llama-server over the tiny
   GGUF, through a counting proxy), or `llm+minilm` (the same plus the real
   all-MiniLM-L6-v2 embedding in-process, on a small corpus). And a process:
   `ingest` (the CLI, one run per corpus batch, one after the other) or
   `serve` (one job per batch, POST /ingest, each waited for with GET /jobs/ID).
2. The process is killed with SIGKILL after a delay drawn uniformly over the
   reference run's duration (an uninterrupted run of the same profile and
   process into a separate store), or, for a share of the kills, at an event:
   a word-index commit starting, the vector index being saved, the n-th LLM
   request, the n-th document stored. The phase at the kill is recorded from
   what the monitor saw at that instant: vector save (its `.tmp` files),
   word-index flush (tantivy's commit in the -vv log), an LLM request in
   flight (the proxy), the busy threads (/proc: `ingest-embed`), the job's
   phases (serve).
3. Acknowledged documents: those of every batch whose `ingest` exited 0 with
   its summary, or whose job read `succeeded` / `completed_with_errors`
   before the kill.
4. After the kill, before anything writes: `documents list --json` (visible
   documents and chunk counts), the chunk rows read from the store (SQLite
   read-only, or psql), `stats --json`, a words search for sampled documents'
   marker words; compared with the reference: an acknowledged document
   missing or not equal is *lost*; a visible document whose chunks differ
   from the reference (count, text hashes, a chunk without context) is
   *half-visible*.
5. Recovery: the re-ingest (the killed batch and the rest; for serve, the
   service restarted, which resumes its cut job, then the batches never
   submitted), then the store must equal the reference and `stats` be
   consistent. Every LLM answer carries a tag naming its prompt (the proxy
   prepends it), so the answers the store kept are known exactly; a request
   during the recovery for a prompt whose answer was kept is a *repeated*
   LLM call.

Writes <scratch>/crash-<store>-<seed>.json and a human summary (stdout and
<scratch>/crash-<store>-<seed>.txt). Exit status: 0 when nothing was lost,
half-visible, inconsistent or repeated and every recovery equalled the
reference; 1 otherwise; 2 on bad arguments or a setup failure.
"""

import argparse
import collections
import hashlib
import http.client
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

TERMINAL = ("succeeded", "completed_with_errors", "failed", "interrupted")
ACKED = ("succeeded", "completed_with_errors")
TAG_RE = re.compile(r"pxq([0-9a-f]{16})")


def die(msg):
    print(f"crash-campaign: {msg}", file=sys.stderr)
    sys.exit(2)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# The corpus: deterministic, every document and section with its own words.
# --------------------------------------------------------------------------

WORDS = ("river engine copper lantern harbor meadow signal quartz timber velvet orbit canyon "
         "pepper saddle marble thistle falcon garnet willow beacon").split()


def letters(n, width=4):
    """A number as lower-case letters: marker words survive any tokenizer."""
    out = ""
    for _ in range(width):
        out = chr(ord("a") + n % 26) + out
        n //= 26
    return out


class Corpus:
    """`batches` folders of documents in Markdown, text, HTML and JSONL."""

    def __init__(self, root, name, batches, files_per_batch, sections, words_per_section):
        self.root = os.path.join(root, name)
        self.name = name
        self.batch_dirs = []
        self.markers = {}  # (batch, source name) -> list of document marker words
        serial = 0
        for b in range(batches):
            d = os.path.join(self.root, f"batch{b:02d}")
            os.makedirs(d, exist_ok=True)
            self.batch_dirs.append(d)
            for f in range(files_per_batch):
                serial += 1
                kind = ("md", "md", "txt", "html", "md", "jsonl")[f % 6]
                base = f"{name}-{b:02d}-{f:03d}.{kind}"
                rng = random.Random(f"{name}/{b}/{f}")
                tag = f"{name[:1]}{letters(serial)}"

                def para(k, tag=tag, rng=rng):
                    words = [rng.choice(WORDS) for _ in range(words_per_section)]
                    words.insert(len(words) // 2, f"qxs{tag}x{letters(k, 2)}")
                    return " ".join(words) + "."

                if kind == "jsonl":
                    lines, marks = [], []
                    for r in range(3):
                        m = f"qxd{tag}r{letters(r, 1)}"
                        marks.append(m)
                        text = f"Record {r} carries {m}. " + " ".join(para(r * 10 + k) for k in range(2))
                        lines.append(json.dumps({"id": f"{tag}-{r}", "title": f"Record {tag} {r}", "text": text}))
                    body = "\n".join(lines) + "\n"
                else:
                    m = f"qxd{tag}"
                    marks = [m]
                    secs = [(f"Part {k}", para(k)) for k in range(sections)]
                    if kind == "md":
                        body = f"# Report {tag}\n\nThis report carries the word {m}.\n\n" + "".join(
                            f"## {h}\n\n{p}\n\n" for h, p in secs)
                    elif kind == "txt":
                        body = f"Notes {tag}\n\nThese notes carry the word {m}.\n\n" + "".join(
                            f"{p}\n\n" for _, p in secs)
                    else:
                        body = (f"<!doctype html><html><head><title>Page {tag}</title></head><body><main>"
                                f"<h1>Page {tag}</h1><p>This page carries the word {m}.</p>"
                                + "".join(f"<h2>{h}</h2><p>{p}</p>" for h, p in secs)
                                + "</main></body></html>\n")
                with open(os.path.join(d, base), "w") as fh:
                    fh.write(body)
                self.markers[(b, base)] = marks

    def files(self, b):
        d = self.batch_dirs[b]
        return [os.path.join(d, n) for n in sorted(os.listdir(d))]


# --------------------------------------------------------------------------
# The counting LLM proxy: forwards to llama-server, tags every answer.
# --------------------------------------------------------------------------

class Proxy:
    """Between DataFactory and llama-server. Records every chat request
    (its prompt's hash, when it started and ended, the run it belongs to) and
    prepends `pxq<hash>` to each answer, so a context kept in the store names
    the prompt it answered."""

    def __init__(self, backend):
        self.backend = backend  # host, port
        self.lock = threading.Lock()
        self.requests = []  # dicts: hash, label, started, ended, status
        self.label = "idle"
        self.in_flight = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                self.forward(None)

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                self.forward(self.rfile.read(n))

            def forward(self, body):
                chat = self.path.startswith("/v1/chat/completions")
                rec = None
                if chat:
                    try:
                        req = json.loads(body)
                        prompt = json.dumps(req.get("messages"), sort_keys=True)
                    except ValueError:
                        req, prompt = None, ""
                    h = hashlib.sha256(prompt.encode()).hexdigest()[:16]
                    rec = {"hash": h, "label": proxy.label, "started": time.monotonic(), "ended": None,
                           "status": None, "stream": bool(req and req.get("stream"))}
                    with proxy.lock:
                        proxy.requests.append(rec)
                        proxy.in_flight += 1
                try:
                    conn = http.client.HTTPConnection(*proxy.backend, timeout=600)
                    headers = {"content-type": self.headers.get("content-type", "application/json")}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    status = resp.status
                    ctype = resp.getheader("content-type", "application/json")
                    conn.close()
                    if rec is not None and status == 200 and not rec["stream"]:
                        try:
                            v = json.loads(data)
                            msg = v["choices"][0]["message"]
                            msg["content"] = f"pxq{rec['hash']} " + (msg.get("content") or "")
                            data = json.dumps(v).encode()
                        except (ValueError, KeyError, IndexError, TypeError):
                            pass
                    self.send_response(status)
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    if rec is not None:
                        rec["status"] = status
                except OSError as e:
                    if rec is not None:
                        rec["status"] = f"error: {e}"
                finally:
                    if rec is not None:
                        rec["ended"] = time.monotonic()
                        with proxy.lock:
                            proxy.in_flight -= 1

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A client killed mid-connection is what this campaign does: no traceback.
        self.server.handle_error = lambda request, address: None
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set_label(self, label):
        self.label = label

    def recently_answered(self, label, seconds):
        """Whether a request of `label` ended within the last `seconds`."""
        now = time.monotonic()
        with self.lock:
            return any(r["ended"] and now - r["ended"] < seconds for r in self.requests[-8:] if r["label"] == label)

    def since(self, label):
        with self.lock:
            return [r for r in self.requests if r["label"] == label]


def start_llama_server(binary, gguf, slots, ctx_per_slot, log):
    port = free_port()
    cmd = [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-np", str(slots),
           "-c", str(slots * ctx_per_slot), "-t", "1", "-tb", "1", "--no-webui", "--no-repack",
           "-b", "512", "-ub", "512"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            die(f"llama-server exited ({proc.returncode}); see its log")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, ("127.0.0.1", port)
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    proc.kill()
    die("llama-server did not become healthy in 120 s")


# --------------------------------------------------------------------------
# Stores: where a trial's data lives, and reading it back.
# --------------------------------------------------------------------------

class PgAdmin:
    def __init__(self, url, psql):
        self.url = url
        self.psql = psql

    def run(self, sql, url=None):
        r = subprocess.run([self.psql, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", url or self.url,
                            "-c", sql], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr.strip()} (SQL: {sql[:200]})")
        return r.stdout


def with_database(url, db):
    p = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((p.scheme, p.netloc, "/" + db, p.query, p.fragment))


class TrialStore:
    """One trial's store: a data folder, and on PostgreSQL a schema of its own."""

    def __init__(self, args, root, name, pg):
        self.args = args
        self.data = os.path.join(root, name, "data")
        os.makedirs(self.data, exist_ok=True)
        self.pg = pg
        self.schema = ("crash_" + re.sub(r"[^a-z0-9_]", "_", name.lower()))[:60] if pg else None

    def config_lines(self):
        if not self.pg:
            return []
        return ["[store]", 'backend = "postgres"', f'url = "{self.pg.url}"', f'schema = "{self.schema}"',
                "lease_seconds = 2"]

    def rows(self):
        """(documents {id: (source, version)}, chunks [(doc, ordinal, md5, has_context)], llm tags)."""
        if self.pg:
            q = self.pg.run
            s = self.schema
            exists = q(f"SELECT count(*) FROM information_schema.tables WHERE table_schema = '{s}' "
                       "AND table_name = 'chunks'").strip()
            if exists == "0":
                return {}, [], set()
            docs = {}
            for line in q(f"SELECT id, version FROM {s}.documents").splitlines():
                i, v = line.split("|")
                docs[i] = int(v)
            chunks = []
            for line in q(f"SELECT document_id, ordinal, md5(text), context IS NOT NULL FROM {s}.chunks").splitlines():
                d, o, m, c = line.split("|")
                chunks.append((d, int(o), m, c == "t"))
            tags = set(TAG_RE.findall(q(f"SELECT context FROM {s}.llm_contexts")))
            return docs, chunks, tags
        db = os.path.join(self.data, "datafactory.sqlite3")
        if not os.path.exists(db):
            return {}, [], set()
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            docs = {i: v for i, v in conn.execute("SELECT id, version FROM documents")}
            chunks = [(d, o, hashlib.md5(t.encode()).hexdigest(), c is not None)
                      for d, o, t, c in conn.execute("SELECT document_id, ordinal, text, context FROM chunks")]
            tags = set()
            for (c,) in conn.execute("SELECT context FROM llm_contexts"):
                tags.update(TAG_RE.findall(c))
            return docs, chunks, tags
        finally:
            conn.close()


def fingerprint(docs, chunks):
    """Per document: chunk count, a hash of its chunk texts in order, chunks without a context."""
    by_doc = collections.defaultdict(list)
    for d, o, m, c in chunks:
        by_doc[d].append((o, m, c))
    out = {}
    for d in docs:
        cs = sorted(by_doc.get(d, []))
        h = hashlib.sha256("".join(m for _, m, _ in cs).encode()).hexdigest()[:16]
        ords_ok = [o for o, _, _ in cs] == list(range(len(cs)))
        out[d] = {"chunks": len(cs), "hash": h, "no_context": sum(1 for _, _, c in cs if not c), "ordinals_ok": ords_ok}
    orphans = sum(len(v) for d, v in by_doc.items() if d not in docs)
    return out, orphans


# --------------------------------------------------------------------------
# Running DataFactory.
# --------------------------------------------------------------------------

class Profile:
    def __init__(self, name, corpus, llm, model):
        self.name, self.corpus, self.llm, self.model = name, corpus, llm, model


class Env:
    """What every run shares: the binary, the proxy, the model folder."""

    def __init__(self, args, proxy):
        self.args = args
        self.proxy = proxy

    def write_config(self, folder, store, profile):
        lines = list(store.config_lines())
        lines += ["[enrichment]"]
        if profile.llm:
            lines += ['mode = "auto"', "max_answer_tokens = 12", "attempts = 4", "backoff_ms = 100",
                      "[[enrichment.endpoints]]", 'kind = "openai"', f'url = "{self.proxy.url}"',
                      'model = "tiny"', "slots = 2", "context_tokens = 4096", "tokenize = true"]
        else:
            lines += ['mode = "heuristic"']
        path = os.path.join(folder, "datafactory.toml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def command(self, store, profile, *args, verbose=False):
        cfg = os.path.join(os.path.dirname(store.data), "datafactory.toml")
        cmd = [self.args.bin, "--config", cfg, "--data-dir", store.data]
        if verbose:
            cmd.append("-vv")
        return cmd + list(args)

    def env(self, profile):
        e = {k: v for k, v in os.environ.items() if not k.startswith("DATAFACTORY_")}
        e["DATAFACTORY_EMBEDDING__MODEL"] = self.args.minilm if profile.model else ""
        e["NO_COLOR"] = "1"
        return e

    def run_json(self, store, profile, *args, ok=(0,)):
        r = subprocess.run(self.command(store, profile, *args), capture_output=True, text=True,
                           env=self.env(profile), cwd=os.path.dirname(store.data), timeout=900)
        if r.returncode not in ok:
            raise RuntimeError(f"{' '.join(args)} exited {r.returncode}: {r.stderr.strip()[-800:]}")
        return json.loads(r.stdout) if r.stdout.strip() else None, r.returncode


class Monitor:
    """Watches a DataFactory process: its -vv log (word-index commits,
    parsing), its threads' CPU, the vector index's temporary files, the
    proxy; fires the kill at a time or an event and says what it hit."""

    def __init__(self, store, proxy, label):
        self.store = store
        self.proxy = proxy
        self.label = label
        self.lock = threading.Lock()
        self.in_flush = False
        self.commits = 0
        self.parsed = 0
        self.log_lines = 0
        self.busy = set()
        self.job_phases = ""

    def follow(self, stream, sink):
        for raw in iter(stream.readline, b""):
            sink.write(raw)
            line = raw.decode(errors="replace")
            with self.lock:
                self.log_lines += 1
                if "Preparing commit" in line:
                    self.in_flush = True
                    self.commits += 1
                elif "Running garbage collection" in line or "Saved metas" in line and self.in_flush:
                    self.in_flush = False
                elif "parsing format=" in line:
                    self.parsed += 1

    def threads_cpu(self, pid):
        out = {}
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    with open(f"/proc/{pid}/task/{tid}/stat") as f:
                        stat = f.read()
                    comm = stat[stat.index("(") + 1:stat.rindex(")")]
                    fields = stat[stat.rindex(")") + 2:].split()
                    out[tid] = (comm, int(fields[11]) + int(fields[12]))
                except (OSError, ValueError):
                    pass
        except OSError:
            pass
        return out

    def vector_saving(self):
        d = os.path.join(self.store.data, "vectors")
        try:
            return any(n.endswith(".tmp") for n in os.listdir(d))
        except OSError:
            return False

    def phase(self):
        with self.lock:
            flush, parsed = self.in_flush, self.parsed
        if self.vector_saving():
            return "vector-save"
        if flush:
            return "word-index-flush"
        if self.proxy and (self.proxy.in_flight > 0 or self.proxy.recently_answered(self.label, 0.1)):
            return "enrichment"
        if self.proxy and "enrichment:" in self.job_phases and "embedding:" not in self.job_phases:
            return "enrichment"
        if "ingest-embed" in self.busy or "embedding:" in self.job_phases:
            return "embedding"
        if parsed == 0:
            return "startup"
        return "parse/chunk/commit"


# --------------------------------------------------------------------------
# One trial.
# --------------------------------------------------------------------------

class Trial:
    def __init__(self, env, profile, process, store, corpus, label):
        self.env, self.profile, self.process, self.store, self.corpus = env, profile, process, store, corpus
        self.label = label
        self.folder = os.path.dirname(store.data)
        env.write_config(self.folder, store, profile)
        self.acked_batches = []
        self.submitted = {}  # batch -> job id (serve)
        self.killed_batch = None
        self.progress_stored = 0
        self.procs = []

    # ---- ingest (CLI) ----

    def run_cli(self, kill_at=None, trigger=None, batches=None):
        """Runs `ingest` per batch; kills at `kill_at` seconds (from the
        start) or when `trigger(monitor)` is true. Returns (seconds, kill info)."""
        start = time.monotonic()
        kill = None
        for b in (batches if batches is not None else range(len(self.corpus.batch_dirs))):
            mon = Monitor(self.store, self.env.proxy if self.profile.llm else None, self.label)
            log = open(os.path.join(self.folder, f"ingest-{b}.log"), "ab")
            p = subprocess.Popen(self.env.command(self.store, self.profile, "ingest", "--json",
                                                  self.corpus.batch_dirs[b], verbose=True),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env.env(self.profile),
                                 cwd=self.folder)
            out = []
            t_out = threading.Thread(target=lambda: out.append(p.stdout.read()), daemon=True)
            t_out.start()
            t_err = threading.Thread(target=mon.follow, args=(p.stderr, log), daemon=True)
            t_err.start()
            kill = self.watch(p, mon, start, kill_at, trigger)
            t_out.join()
            t_err.join()
            log.close()
            if kill:
                kill["batch"] = b
                self.killed_batch = b
                return time.monotonic() - start, kill
            if p.returncode != 0:
                raise RuntimeError(f"ingest of batch {b} exited {p.returncode}; see {log.name}")
            summary = json.loads(out[0])
            if summary["documents"]["failed"]:
                raise RuntimeError(f"ingest of batch {b} failed documents: {summary['failed']}")
            self.acked_batches.append(b)
        return time.monotonic() - start, None

    def watch(self, p, mon, start, kill_at, trigger):
        prev = {}
        while p.poll() is None:
            now = time.monotonic() - start
            cpu = mon.threads_cpu(p.pid)
            mon.busy = {c for t, (c, v) in cpu.items() if t in prev and v > prev[t][1]}
            prev = cpu
            if (kill_at is not None and now >= kill_at) or (trigger and trigger(mon)):
                phase = mon.phase()
                busy = sorted(mon.busy)
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                return {"at": round(now, 3), "phase": phase, "busy_threads": busy,
                        "job_phases": mon.job_phases, "word_commits_seen": mon.commits}
            time.sleep(0.005)
        return None

    # ---- serve ----

    def start_serve(self, mon, logname):
        port = free_port()
        log = open(os.path.join(self.folder, logname), "ab")
        p = subprocess.Popen(self.env.command(self.store, self.profile, "serve", "--address",
                                              f"127.0.0.1:{port}", verbose=True),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env.env(self.profile),
                             cwd=self.folder)
        threading.Thread(target=mon.follow, args=(p.stderr, log), daemon=True).start()
        return p, f"http://127.0.0.1:{port}"

    @staticmethod
    def http(method, url, body=None, headers=None, timeout=30):
        req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def upload(self, base, b):
        boundary = uuid.uuid4().hex
        parts = []
        for path in self.corpus.files(b):
            with open(path, "rb") as f:
                data = f.read()
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                         f'filename="{os.path.basename(path)}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                         .encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        status, v = self.http("POST", f"{base}/ingest", body,
                              {"content-type": f"multipart/form-data; boundary={boundary}"})
        if status != 202:
            raise RuntimeError(f"POST /ingest answered {status}: {v}")
        return v["job_id"]

    def serve_driver(self, base, batches, state, stop):
        """Submits each batch and waits for its job; records acknowledgements."""
        deadline = time.monotonic() + 120
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=1):
                    break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    state["error"] = "serve did not answer /health in 120 s"
                    return
                time.sleep(0.02)
        for b in batches:
            if stop.is_set():
                return
            try:
                job = self.submitted.get(b)
                if job is None:
                    job = self.upload(base, b)
                    self.submitted[b] = job
                while not stop.is_set():
                    status, v = self.http("GET", f"{base}/jobs/{job}")
                    if status == 404:  # the job never reached the store: submit again
                        job = self.upload(base, b)
                        self.submitted[b] = job
                        continue
                    if status != 200:
                        raise RuntimeError(f"GET /jobs answered {status}: {v}")
                    state["phases"] = ",".join(f"{p.get('phase')}:{p.get('items')}" for p in v.get("phases") or []
                                               if p.get("state") == "running")
                    # Documents the job's progress reports stored (committed).
                    state["stored"] = (b, sum(p.get("items", 0) for p in v.get("phases") or []
                                              if p.get("phase") == "storage"))
                    if v["state"] in ACKED:
                        if v.get("summary", {}).get("documents", {}).get("failed"):
                            state["error"] = f"job {job} failed documents"
                        self.acked_batches.append(b)
                        break
                    if v["state"] in TERMINAL:
                        state["error"] = f"job {job} ended {v['state']}: {v.get('error')}"
                        return
                    time.sleep(0.05)
            except (OSError, RuntimeError, ValueError) as e:
                if not stop.is_set():
                    state["error"] = f"driver: {e}"
                return
        state["done"] = True

    def run_serve(self, kill_at=None, trigger=None, batches=None, logname="serve.log"):
        start = time.monotonic()
        mon = Monitor(self.store, self.env.proxy if self.profile.llm else None, self.label)
        p, base = self.start_serve(mon, logname)
        self.procs.append(p)
        state, stop = {}, threading.Event()
        todo = list(batches if batches is not None else range(len(self.corpus.batch_dirs)))
        driver = threading.Thread(target=self.serve_driver, args=(base, todo, state, stop), daemon=True)
        driver.start()
        prev = {}
        kill = None
        while True:
            if p.poll() is not None:
                stop.set()
                raise RuntimeError(f"serve exited on its own ({p.returncode}); see {logname}")
            now = time.monotonic() - start
            cpu = mon.threads_cpu(p.pid)
            mon.busy = {c for t, (c, v) in cpu.items() if t in prev and v > prev[t][1]}
            prev = cpu
            mon.job_phases = state.get("phases", "")
            if "error" in state:
                stop.set()
                p.kill()
                p.wait()
                raise RuntimeError(state["error"])
            if kill_at is None and trigger is None and state.get("done"):
                break
            if (kill_at is not None and now >= kill_at) or (trigger and trigger(mon)):
                phase = mon.phase()
                busy = sorted(mon.busy)
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                stop.set()
                kill = {"at": round(now, 3), "phase": phase, "busy_threads": busy, "job_phases": mon.job_phases,
                        "word_commits_seen": mon.commits,
                        "batch": next((b for b in todo if b not in self.acked_batches), None)}
                self.killed_batch = kill["batch"]
                stored = state.get("stored")
                if stored and stored[0] == kill["batch"]:
                    kill["progress_stored"] = self.progress_stored = stored[1]
                break
            if state.get("done"):
                # Finished before the kill moment: the trial kills nothing.
                break
            time.sleep(0.005)
        seconds = time.monotonic() - start
        driver.join(timeout=5)
        if kill is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return seconds, kill


# --------------------------------------------------------------------------
# Checks.
# --------------------------------------------------------------------------

def snapshot(env, store, profile):
    docs, chunks, tags = store.rows()
    fp, orphans = fingerprint(docs, chunks)
    return fp, orphans, tags


def compare_after_kill(env, trial, reference, ref_batches):
    """What the store shows right after the kill, before anything writes."""
    store, profile = trial.store, trial.profile
    listed, _ = env.run_json(store, profile, "documents", "list", "--json")
    visible = {d["id"]: d for d in listed or []}
    fp, orphans, tags = snapshot(env, store, profile)
    stats, code = env.run_json(store, profile, "stats", "--json", ok=(0, 3))
    acked = set()
    for b in trial.acked_batches:
        acked |= ref_batches[b]
    lost, half = [], []
    for d in acked:
        if d not in visible or d not in fp or fp[d]["hash"] != reference[d]["hash"] \
                or fp[d]["chunks"] != reference[d]["chunks"]:
            lost.append(d)
    for d, v in visible.items():
        r = reference.get(d)
        f = fp.get(d)
        if r is None or f is None or v["chunks"] != r["chunks"] or f["chunks"] != r["chunks"] \
                or f["hash"] != r["hash"] or not f["ordinals_ok"] or (profile.llm and f["no_context"]):
            half.append(d)
    # Stored rows the listing does not show (or the reverse) are half-visible too.
    for d in set(fp) ^ set(visible):
        if d not in half:
            half.append(d)
    if orphans:
        half.append(f"{orphans} orphan chunk(s)")
    # serve: the killed job's progress said this many documents were stored.
    progress_lost = 0
    if trial.progress_stored:
        present = sum(1 for d in ref_batches[trial.killed_batch] if d in visible and d not in half)
        progress_lost = max(0, trial.progress_stored - present)
    consistent = bool(stats and stats.get("consistent")) and stats.get("documents") == len(visible)
    return {"acknowledged": len(acked), "visible": len(visible), "lost": lost, "half": half,
            "progress_lost": progress_lost,
            "stats_consistent": consistent, "stats_problems": (stats or {}).get("problems"),
            "stats_exit": code, "kept_tags": tags}


def search_check(env, trial, sample, reference, rng):
    """Each sampled document is found by its marker word exactly when it is
    stored; two visible documents, read with `documents show`, have the
    reference's chunks."""
    bad = []
    listed, _ = env.run_json(trial.store, trial.profile, "documents", "list", "--json")
    titles = {d["title"] for d in listed or []}
    for d in rng.sample(listed or [], min(2, len(listed or []))):
        v, _ = env.run_json(trial.store, trial.profile, "documents", "show", d["id"], "--json")
        chunks = sorted(v["chunks"], key=lambda c: c["ordinal"])
        h = hashlib.sha256("".join(hashlib.md5(c["text"].encode()).hexdigest() for c in chunks).encode())
        r = reference.get(d["id"])
        if r is None or len(chunks) != r["chunks"] or h.hexdigest()[:16] != r["hash"]:
            bad.append(f"documents show {d['id']}: differs from the reference")
        if trial.profile.llm and any(not c.get("context") for c in chunks):
            bad.append(f"documents show {d['id']}: a chunk without context")
    for marker, title in sample:
        v, _ = env.run_json(trial.store, trial.profile, "search", "--mode", "lexical", "--json", "-k", "5", marker)
        hit = any(h.get("title") == title for h in v.get("results", []))
        if hit != (title in titles):
            bad.append(f"{marker}: found={hit} stored={title in titles}")
    return bad


# --------------------------------------------------------------------------
# The campaign.
# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="the datafactory binary to crash (default: `cargo build --release -p datafactory` "
                                  "and its target/release/datafactory)")
    ap.add_argument("--store", choices=["embedded", "postgres"], required=True)
    ap.add_argument("--postgres-url", default=os.environ.get("DATAFACTORY_TEST_POSTGRES", ""),
                    help="a PostgreSQL URL whose user may create databases (a database is created per run)")
    ap.add_argument("--psql", default=os.path.join(os.environ.get("DATAFACTORY_TEST_POSTGRES_BIN", ""), "psql"),
                    help="the psql program (default: $DATAFACTORY_TEST_POSTGRES_BIN/psql)")
    ap.add_argument("--kills", type=int, default=50,
                    help="kills to make (default 50): trials run until that many processes were killed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scratch", required=True, help="a folder for corpora, stores and logs (emptied first)")
    ap.add_argument("--processes", default="ingest,serve", help="which to kill: ingest, serve or both")
    ap.add_argument("--profiles", default="words:6,llm:3,llm+minilm:1",
                    help="profiles and their weights (words, llm, llm+minilm)")
    ap.add_argument("--event-share", type=float, default=0.3,
                    help="share of kills fired at an event rather than at a random time (default 0.3)")
    ap.add_argument("--llama-server", default=os.environ.get("DATAFACTORY_TEST_LLAMA_SERVER", ""))
    ap.add_argument("--gguf", default=os.environ.get("DATAFACTORY_TEST_TINY_GGUF", ""))
    ap.add_argument("--minilm", default=os.environ.get("DATAFACTORY_TEST_MINILM", ""))
    ap.add_argument("--keep", action="store_true", help="keep every trial's store (default: only failing ones)")
    args = ap.parse_args()

    if not args.bin:
        args.bin = build_release()
    args.bin = os.path.abspath(args.bin)
    if not os.access(args.bin, os.X_OK):
        die(f"--bin {args.bin} is not an executable file")
    if args.kills < 1:
        die("--kills must be at least 1")
    processes = [p for p in args.processes.split(",") if p]
    if not processes or any(p not in ("ingest", "serve") for p in processes):
        die(f"--processes must name ingest and/or serve, not {args.processes!r}")
    weights = {}
    for item in args.profiles.split(","):
        name, _, w = item.partition(":")
        if name not in ("words", "llm", "llm+minilm"):
            die(f"--profiles: unknown profile {name!r} (words, llm, llm+minilm)")
        try:
            weights[name] = float(w or 1)
        except ValueError:
            die(f"--profiles: weight of {name} is not a number: {w!r}")
    needs_llm = any(n != "words" and w > 0 for n, w in weights.items())
    if needs_llm:
        for flag, v in (("--llama-server / DATAFACTORY_TEST_LLAMA_SERVER", args.llama_server),
                        ("--gguf / DATAFACTORY_TEST_TINY_GGUF", args.gguf)):
            if not v or not os.path.exists(v):
                die(f"the llm profiles need {flag} (got {v!r}); or pass --profiles words:1")
    if weights.get("llm+minilm", 0) > 0 and not os.path.isfile(os.path.join(args.minilm, "config.json")):
        die(f"the llm+minilm profile needs --minilm / DATAFACTORY_TEST_MINILM, a model folder (got {args.minilm!r})")
    pg = admin = db = None
    if args.store == "postgres":
        if not args.postgres_url:
            die("--store postgres needs --postgres-url (or DATAFACTORY_TEST_POSTGRES)")
        if not os.access(args.psql, os.X_OK):
            die(f"psql not found at {args.psql!r} (--psql, or DATAFACTORY_TEST_POSTGRES_BIN)")

    scratch = os.path.abspath(args.scratch)
    if os.path.exists(scratch):
        shutil.rmtree(scratch)
    os.makedirs(scratch)
    rng = random.Random(args.seed)

    if args.store == "postgres":
        db = f"crash_{args.seed}_{os.getpid()}"
        admin = PgAdmin(args.postgres_url, args.psql)
        admin.run(f"CREATE DATABASE {db}")
        pg = PgAdmin(with_database(args.postgres_url, db), args.psql)
        pg.run("CREATE EXTENSION IF NOT EXISTS vector")
        print(f"PostgreSQL database {db} created for this run")

    corpora = {
        "words": Corpus(scratch + "/corpus", "words", batches=6, files_per_batch=40, sections=5, words_per_section=60),
        "llm": Corpus(scratch + "/corpus", "llm", batches=3, files_per_batch=6, sections=3, words_per_section=25),
        "llm+minilm": Corpus(scratch + "/corpus", "llmminilm", batches=2, files_per_batch=6, sections=2,
                             words_per_section=12),
    }
    profiles = {n: Profile(n, corpora[n], llm=n != "words", model=n == "llm+minilm") for n in weights}

    llama = proxy = None
    llama_log = open(os.path.join(scratch, "llama-server.log"), "ab")
    if needs_llm:
        llama, backend = start_llama_server(args.llama_server, args.gguf, 2, 4096, llama_log)
        proxy = Proxy(backend)
    env = Env(args, proxy)

    started = time.time()
    results = []
    try:
        # References: one uninterrupted run per profile and process.
        refs = {}
        for pname, profile in profiles.items():
            for proc in processes:
                label = f"ref-{pname}-{proc}".replace("+", "-")
                store = TrialStore(args, scratch, label, pg)
                trial = Trial(env, profile, proc, store, profile.corpus, label)
                if proxy:
                    proxy.set_label(label)
                seconds, _ = (trial.run_cli() if proc == "ingest" else trial.run_serve())
                docs, chunks, _ = store.rows()
                fp, orphans = fingerprint(docs, chunks)
                listed, _ = env.run_json(store, profile, "documents", "list", "--json")
                by_batch = collections.defaultdict(set)
                for d in listed:
                    name = d["source"].split("#")[0].rsplit("/", 1)[-1].rsplit(":", 1)[-1]
                    by_batch[int(name.split("-")[1])].add(d["id"])
                expected_docs = sum(len(m) for m in profile.corpus.markers.values())
                if len(fp) != expected_docs or orphans or (profile.llm and any(v["no_context"] for v in fp.values())):
                    raise RuntimeError(f"reference {label}: {len(fp)} documents of {expected_docs} expected, "
                                       f"{orphans} orphan chunks")
                llm_calls = len(proxy.since(label)) if proxy else 0
                refs[(pname, proc)] = {"fp": fp, "batches": by_batch, "seconds": seconds, "llm_calls": llm_calls}
                print(f"reference {pname:10s} {proc:6s}: {len(fp)} documents, "
                      f"{sum(v['chunks'] for v in fp.values())} chunks, {seconds:.1f} s, {llm_calls} LLM calls",
                      flush=True)
                if not args.keep:
                    shutil.rmtree(os.path.dirname(store.data), ignore_errors=True)

        names = list(weights)
        # Trials until --kills processes were killed (a trial whose run ended
        # before its kill moment kills nothing), at most twice as many trials.
        k = -1
        while sum(1 for r in results if r.get("killed")) < args.kills and k + 1 < 2 * args.kills:
            k += 1
            pname = rng.choices(names, weights=[weights[n] for n in names])[0]
            proc = processes[k % len(processes)]
            profile = profiles[pname]
            ref = refs[(pname, proc)]
            label = f"t{k:03d}-{pname}-{proc}".replace("+", "-")
            store = TrialStore(args, scratch, label, pg)
            trial = Trial(env, profile, proc, store, profile.corpus, label)
            if proxy:
                proxy.set_label(label)
            kill_at, trigger, how = None, None, "time"
            if rng.random() < args.event_share:
                # The word index and the vector file are the embedded store's.
                events = ["doc-stored"] + ([] if pg else ["word-commit"])
                if profile.llm:
                    events.append("llm-request")
                if profile.model and not pg:
                    events.append("vector-save")
                ev = rng.choice(events)
                n = rng.randint(1, 3)
                how = f"event:{ev}#{n}"
                if ev == "word-commit":
                    trigger = lambda m, n=n: m.commits >= n
                elif ev == "vector-save":
                    trigger = lambda m: m.vector_saving()
                elif ev == "llm-request":
                    trigger = lambda m, n=n, lab=label: len(proxy.since(lab)) >= n * 3
                else:
                    trigger = doc_trigger(store, n * 4)
                # A time limit too, so an event that never comes still kills.
                kill_at = ref["seconds"] * 1.5
            else:
                kill_at = rng.uniform(0.05, ref["seconds"])
            t0 = time.monotonic()
            try:
                _, kill = trial.run_cli(kill_at, trigger) if proc == "ingest" else trial.run_serve(kill_at, trigger)
                res = {"trial": k, "label": label, "store": args.store, "process": proc, "profile": pname,
                       "how": how, "planned_at": round(kill_at, 3) if kill_at else None}
                if kill is None:
                    res.update({"killed": False})
                    res.update(after_recovery(env, trial, ref, proxy, label, set()))
                else:
                    res.update({"killed": True, **kill})
                    after = compare_after_kill(env, trial, ref["fp"], ref["batches"])
                    kept = after.pop("kept_tags")
                    res.update(after)
                    res["sample_search_problems"] = search_check(env, trial, sample_markers(rng, profile, trial),
                                                                 ref["fp"], rng)
                    res.update(after_recovery(env, trial, ref, proxy, label, kept))
            except Exception as e:  # noqa: BLE001: a trial that cannot run is reported, not hidden
                res = {"trial": k, "label": label, "store": args.store, "process": proc, "profile": pname,
                       "how": how, "error": f"{type(e).__name__}: {e}"}
            finally:
                for p in trial.procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            res["seconds"] = round(time.monotonic() - t0, 1)
            results.append(res)
            print(kill_line(res), flush=True)
            bad = is_bad(res)
            if not args.keep and not bad:
                shutil.rmtree(os.path.dirname(store.data), ignore_errors=True)
                if pg:
                    pg.run(f"DROP SCHEMA IF EXISTS {store.schema} CASCADE")
    finally:
        if llama:
            llama.kill()
            llama.wait()
        llama_log.close()

    summary = summarize(args, results, time.time() - started, refs)
    base = os.path.join(scratch, f"crash-{args.store}-{args.seed}")
    with open(base + ".json", "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items()}, "references": {
            f"{p}/{q}": {"documents": len(r["fp"]), "chunks": sum(v["chunks"] for v in r["fp"].values()),
                         "seconds": round(r["seconds"], 2), "llm_calls": r["llm_calls"]}
            for (p, q), r in refs.items()}, "trials": results, "summary": summary["table"]}, f, indent=1,
                  default=sorted)
    with open(base + ".txt", "w") as f:
        f.write(summary["text"])
    print(summary["text"])
    print(f"written: {base}.json, {base}.txt")
    if pg and not args.keep and not any(is_bad(r) for r in results):
        admin.run(f"DROP DATABASE {db}")
    sys.exit(1 if any(is_bad(r) for r in results) else 0)


def build_release():
    """`cargo build --release -p datafactory` in this repository; its binary."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print("no --bin: cargo build --release -p datafactory", flush=True)
    r = subprocess.run(["cargo", "build", "--release", "-p", "datafactory"], cwd=repo)
    if r.returncode != 0:
        die(f"cargo build --release failed ({r.returncode})")
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=repo,
                          capture_output=True, text=True, check=True)
    return os.path.join(json.loads(meta.stdout)["target_directory"], "release", "datafactory")


def doc_trigger(store, n):
    """True once `n` documents are committed (read-only SQLite; on PostgreSQL
    psql, at most every 200 ms)."""
    last = [0.0, 0]

    def trig(_mon):
        now = time.monotonic()
        if now - last[0] < (0.2 if store.pg else 0.02):
            return last[1] >= n
        last[0] = now
        try:
            if store.pg:
                out = store.pg.run(f"SELECT count(*) FROM {store.schema}.documents")
                last[1] = int(out.strip() or 0)
            else:
                db = os.path.join(store.data, "datafactory.sqlite3")
                if os.path.exists(db):
                    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
                    try:
                        last[1] = c.execute("SELECT count(*) FROM documents").fetchone()[0]
                    finally:
                        c.close()
        except (sqlite3.Error, RuntimeError, ValueError):
            pass
        return last[1] >= n

    return trig


def sample_markers(rng, profile, trial):
    """A few (marker word, title) pairs of non-JSONL documents."""
    items = [(b, name, m[0]) for (b, name), m in profile.corpus.markers.items() if not name.endswith(".jsonl")]
    out = []
    for b, name, m in rng.sample(items, min(4, len(items))):
        tag = m[3:]
        kind = name.rsplit(".", 1)[1]
        title = {"md": f"Report {tag}", "txt": f"Notes {tag}", "html": f"Page {tag}"}[kind]
        out.append((m, title))
    return out


def after_recovery(env, trial, ref, proxy, label, kept_tags):
    """Re-ingests the rest, then the store must equal the reference."""
    rec_label = label + "-recovery"
    if proxy:
        proxy.set_label(rec_label)
    n_batches = len(trial.corpus.batch_dirs)
    todo = [b for b in range(n_batches) if b not in trial.acked_batches]
    if trial.process == "ingest":
        if todo:
            trial.run_cli(batches=todo)
    else:
        # The restarted service resumes the cut job; the driver waits for it
        # (by its id) and submits the batches never submitted.
        trial.run_serve(batches=todo, logname="serve-recovery.log")
    fp, orphans, _ = snapshot(env, trial.store, trial.profile)
    stats, code = env.run_json(trial.store, trial.profile, "stats", "--json", ok=(0, 3))
    diff = sorted(d for d in set(fp) | set(ref["fp"]) if fp.get(d) != ref["fp"].get(d))
    repeated = 0
    asked = 0
    if proxy:
        calls = proxy.since(rec_label)
        asked = len(calls)
        repeated = sum(1 for r in calls if r["hash"] in kept_tags)
    return {"recovered_equal": not diff and not orphans, "recovery_diff": diff[:10],
            "recovery_stats_consistent": bool(stats and stats.get("consistent")),
            "llm_kept_before": len(kept_tags), "llm_asked_in_recovery": asked, "llm_repeated": repeated}


def is_bad(r):
    if "error" in r:
        return True
    return bool(r.get("lost") or r.get("half") or r.get("progress_lost") or (r.get("killed") and not r.get("stats_consistent"))
                or r.get("sample_search_problems") or not r.get("recovered_equal")
                or not r.get("recovery_stats_consistent") or r.get("llm_repeated"))


def kill_line(r):
    if "error" in r:
        return f"{r['label']}: ERROR {r['error']}"
    if not r.get("killed"):
        return f"{r['label']}: finished before the kill moment ({r['how']}); recovery equal={r['recovered_equal']}"
    return (f"{r['label']}: {r['how']} at {r['at']:.2f}s phase={r['phase']}"
            f"{' [' + r['job_phases'] + ']' if r.get('job_phases') else ''} batch={r['batch']} "
            f"acked={r['acknowledged']}{'+' + str(r['progress_stored']) if r.get('progress_stored') else ''} "
            f"visible={r['visible']} lost={len(r['lost']) + r.get('progress_lost', 0)} half={len(r['half'])} "
            f"stats={'ok' if r['stats_consistent'] else 'INCONSISTENT ' + str(r.get('stats_problems'))} "
            f"search={'ok' if not r['sample_search_problems'] else r['sample_search_problems']} "
            f"recovery={'equal' if r['recovered_equal'] else 'DIFFERS ' + str(r['recovery_diff'])} "
            f"llm kept={r['llm_kept_before']} asked={r['llm_asked_in_recovery']} repeated={r['llm_repeated']}"
            f" ({r['seconds']}s)")


def summarize(args, results, wall, refs):
    rows = collections.OrderedDict()
    for r in results:
        key = (r["store"], r["process"], r["profile"])
        row = rows.setdefault(key, collections.Counter())
        row["trials"] += 1
        if "error" in r:
            row["errors"] += 1
            continue
        if not r.get("killed"):
            row["not killed"] += 1
            continue
        row["kills"] += 1
        row["acknowledged"] += r["acknowledged"] + r.get("progress_stored", 0)
        row["lost"] += len(r["lost"]) + r.get("progress_lost", 0)
        row["half"] += len(r["half"])
        row["stats bad"] += 0 if r["stats_consistent"] else 1
        row["search bad"] += 1 if r["sample_search_problems"] else 0
        row["recovery bad"] += 0 if (r["recovered_equal"] and r["recovery_stats_consistent"]) else 1
        row["llm kept"] += r["llm_kept_before"]
        row["llm asked"] += r["llm_asked_in_recovery"]
        row["llm repeated"] += r["llm_repeated"]
    phases = collections.Counter((r["process"], r["phase"]) for r in results if r.get("killed"))
    cols = ["kills", "acknowledged", "lost", "half", "stats bad", "search bad", "recovery bad", "llm kept",
            "llm asked", "llm repeated", "not killed", "errors"]
    lines = [f"Crash campaign: store={args.store} seed={args.seed} kills={args.kills} binary={args.bin}",
             f"wall time {wall / 60:.1f} min", "",
             "| store | process | profile | " + " | ".join(cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    table = []
    for (store, proc, prof), row in rows.items():
        lines.append(f"| {store} | {proc} | {prof} | " + " | ".join(str(row[c]) for c in cols) + " |")
        table.append({"store": store, "process": proc, "profile": prof, **{c: row[c] for c in cols}})
    total = collections.Counter()
    for row in rows.values():
        total.update(row)
    lines.append(f"| {args.store} | all | all | " + " | ".join(str(total[c]) for c in cols) + " |")
    lines += ["", "Phase at the kill:", "", "| process | phase | kills |", "|---|---|---|"]
    for (proc, ph), n in sorted(phases.items()):
        lines.append(f"| {proc} | {ph} | {n} |")
    lines.append("")
    return {"text": "\n".join(lines) + "\n", "table": table}


if __name__ == "__main__":
    main()
