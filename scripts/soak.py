#!/usr/bin/env python3
"""Soak test of `datafactory serve` on loopback (issue 17, "Hardening").

    DATAFACTORY_TEST_MINILM=/path/to/all-MiniLM-L6-v2 \\
        python3 scripts/soak.py BINARY [--minutes 10] [--rps 20] [--json OUT]

Fills a data directory with public sets from tests/data (the Claude docs
sections and the Cranfield abstracts, each with metadata to filter on),
embedded with the real all-MiniLM-L6-v2 (DATAFACTORY_TEST_MINILM; words only
without it, and the summary says so), starts `serve` on a free loopback port
and, for `--minutes`, sends `--rps` requests per second at fixed times (open
loop: a request is due at its time whether or not the earlier ones have
answered) spread over every search mode the model supports (lexical, dense,
hybrid; sparse where the model has a sparse head), with and without a
metadata filter, by POST and GET; every `--ingest-every` seconds it posts a
few small documents (POST /ingest) and follows each job to its end.

Records: requests per kind; errors (a non-2xx answer or a transport error,
with examples); latency p50/p95/p99 per kind (from the request's due time,
so a service that falls behind shows it); the service's RSS
(/proc/PID/status VmRSS) every 10 s; at the end, that every document it
ingested is found by a search. Prints a summary and writes JSON (--json).
Memory verdict: the mean RSS of the last minute against the second minute
(the first is warm-up); more than 10 % and 16 MiB higher is "grows".
Exit code 0 when there were no errors, every ingested document was found and
memory did not grow; 1 otherwise.

`bench/serve_load.sh` is the throughput bench (wrk at full speed, words
only); this is the long run at a fixed rate with every mode and ingests.
"""
import argparse
import json
import os
import queue
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method, url, body=None, timeout=60):
    """(status, parsed body or text); status 0 on a transport error."""
    data, headers = None, {}
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    except (urllib.error.URLError, OSError) as e:
        return 0, f"transport error: {e}"
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw[:300].decode(errors="replace")


# ------------------------------------------------------------------ corpus

def corpus(path, cranfield, claude):
    """The Claude docs sections (metadata: section of the docs) and the first
    `cranfield` Cranfield abstracts (metadata: set); returns (documents, queries)."""
    docs = []
    with open(os.path.join(DATA, "anthropic_docs_rag", "anthropic_docs.json")) as f:
        for i, d in enumerate(json.load(f)[:claude]):
            section = d["chunk_link"].split("/en/")[-1].split("/docs/")[-1].split("/")[0].split("#")[0]
            docs.append({"id": f"claude-{i}", "title": d["chunk_heading"], "text": d["text"],
                         "metadata": {"set": "claude", "section": section}})
    with open(os.path.join(DATA, "cranfield", "cran.all.1400"), encoding="latin-1") as f:
        raw = f.read()
    for rec in raw.split(".I ")[1:cranfield + 1]:
        num = rec.split("\n", 1)[0].strip()
        m = re.search(r"\n\.T\n(.*?)\n\.A\n.*?\n\.W\n(.*)", rec, re.S)
        if not m or not m.group(2).strip():
            continue
        docs.append({"id": f"cran-{num}", "title": " ".join(m.group(1).split())[:120],
                     "text": " ".join(m.group(2).split()), "metadata": {"set": "cranfield"}})
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    queries = []
    with open(os.path.join(DATA, "anthropic_docs_rag", "docs_evaluation_dataset.json")) as f:
        queries += [q["question"] for q in json.load(f)]
    with open(os.path.join(DATA, "cranfield", "cran.qry"), encoding="latin-1") as f:
        for rec in f.read().split(".I ")[1:]:
            text = " ".join(rec.split(".W", 1)[1].split())
            queries.append(" ".join(text.split()[:30]))
    return docs, queries


# -------------------------------------------------------------------- load

class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency = {}   # kind -> [seconds]
        self.errors = {}    # kind -> count
        self.examples = []  # (kind, status, message)
        self.notes = {}     # note text -> count (degraded answers)

    def done(self, kind, seconds, status, body):
        with self.lock:
            self.latency.setdefault(kind, []).append(seconds)
            if not 200 <= status < 300:
                self.errors[kind] = self.errors.get(kind, 0) + 1
                if len(self.examples) < 20:
                    self.examples.append((kind, status, str(body)[:300]))
            elif isinstance(body, dict):
                for n in body.get("notes") or []:
                    self.notes[n] = self.notes.get(n, 0) + 1


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rps", type=float, default=20, help="requests per second, all kinds (default 20)")
    ap.add_argument("--ingest-every", type=float, default=15,
                    help="seconds between ingest requests (default 15)")
    ap.add_argument("--threads", type=int, default=16, help="client threads (default 16)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--words-only", action="store_true", help="no embedding model")
    ap.add_argument("--cranfield", type=int, default=1400,
                    help="Cranfield abstracts in the pre-filled store (0 to 1400, default 1400)")
    ap.add_argument("--claude", type=int, default=232,
                    help="Claude docs sections in the pre-filled store (0 to 232, default 232)")
    args = ap.parse_args()

    model = "" if args.words_only else os.environ.get("DATAFACTORY_TEST_MINILM", "")
    work = tempfile.mkdtemp(prefix="datafactory-soak-")
    try:
        run(args, work, model)
    finally:
        subprocess.run(["rm", "-rf", work])


def run(args, work, model):
    binary = os.path.abspath(args.binary)
    data = os.path.join(work, "data")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DATAFACTORY_") or k.startswith("DATAFACTORY_TEST_")}
    env.update({"DATAFACTORY_EMBEDDING__MODEL": model, "NO_COLOR": "1"})
    docs, queries = corpus(os.path.join(work, "corpus.jsonl"), args.cranfield, args.claude)
    print(f"binary {binary}\nmodel {model or 'none (words only)'}\ncorpus {len(docs)} documents, "
          f"{len(queries)} queries; work dir {work}", flush=True)
    t = time.time()
    p = subprocess.run([binary, "--data-dir", data, "ingest", "--json", os.path.join(work, "corpus.jsonl")],
                       env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"the pre-fill ingest failed ({p.returncode}): {p.stderr[-2000:]}")
    prefill = json.loads(p.stdout)
    print(f"pre-filled in {time.time() - t:.0f} s: {prefill['documents']}, {prefill['chunks']} chunks, "
          f"embedded {prefill['embedding']['chunks']}", flush=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(os.path.join(work, "serve.log"), "w")
    server = subprocess.Popen([binary, "--data-dir", data, "serve", "--address", f"127.0.0.1:{port}"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while call("GET", url + "/health", timeout=2)[0] != 200:
            if time.time() > deadline or server.poll() is not None:
                sys.exit("serve did not start: see " + log.name)
            time.sleep(0.1)
        result = soak(args, url, server.pid, queries, model)
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    result.update({"binary": binary, "model": model or None, "prefill": {
        "documents": prefill["documents"], "chunks": prefill["chunks"],
        "embedded": prefill["embedding"]["chunks"]}, "serve_exit": server.returncode})
    report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    ok = result["errors_total"] == 0 and not result["ingest"]["missing"] and result["memory"]["verdict"] != "grows"
    sys.exit(0 if ok else 1)


def soak(args, url, pid, queries, model):
    rec = Recorder()
    # Which modes this model supports: sparse only with a sparse head.
    modes = ["lexical"] + (["dense", "hybrid"] if model else [])
    st, body = call("POST", url + "/search", {"query": "test", "mode": "sparse", "top_k": 3})
    if st == 200 and not any("sparse" in n for n in body.get("notes") or []):
        modes.append("sparse")
    filters = [{"metadata": {"set": "claude"}}, {"metadata": {"section": "build-with-claude"}},
               {"metadata": {"set": "cranfield"}}]
    rnd = random.Random(17)
    ingested = []           # (marker, job id)
    jobs = {}               # job id -> final state
    jobs_lock = threading.Lock()

    def search(kind, mode, flt, how):
        q = rnd.choice(queries)
        if how == "get":
            qs = urllib.parse.urlencode({"q": q, "mode": mode, "top_k": 10})
            return lambda: call("GET", f"{url}/search?{qs}")
        body = {"query": q, "mode": mode, "top_k": 10}
        if flt:
            body["filter"] = flt
        return lambda: call("POST", url + "/search", body)

    counter = [0]

    def ingest_request():
        counter[0] += 1
        n = counter[0]
        batch = [{"id": f"soak-{n}-{i}", "title": f"Soak note {n}.{i}",
                  "text": f"Soak document {n}.{i} about {rnd.choice(queries)} soakmark{n}x{i}",
                  "metadata": {"set": "soak", "batch": n}} for i in range(5)]

        def send():
            st, body = call("POST", url + "/ingest", {"documents": batch})
            if st == 202:
                with jobs_lock:
                    for i in range(5):
                        ingested.append((f"soakmark{n}x{i}", body["job_id"]))
                    jobs[body["job_id"]] = "queued"
            return st, body
        return send

    kinds = [(f"search_{m}", m, None, "post") for m in modes]
    kinds += [(f"search_{m}_filter", m, None, "post") for m in modes]
    kinds += [(f"get_search_{m}", m, None, "get") for m in modes]

    work = queue.Queue()
    stop = threading.Event()

    def worker():
        while True:
            item = work.get()
            if item is None:
                return
            kind, due, fn = item
            st, body = fn()
            rec.done(kind, time.time() - due, st, body)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.threads)]
    for th in threads:
        th.start()

    rss = []
    start = time.time()

    def sampler():
        while not stop.is_set():
            rss.append((round(time.time() - start, 1), rss_kib(pid)))
            stop.wait(10)

    def follower():
        """Follows every job to its end."""
        while not stop.is_set() or any(s in ("queued", "running") for s in list(jobs.values())):
            with jobs_lock:
                open_jobs = [j for j, s in jobs.items() if s in ("queued", "running")]
            for j in open_jobs:
                st, body = call("GET", f"{url}/jobs/{j}")
                rec.done("get_job", 0.0, st, body)
                if st == 200:
                    with jobs_lock:
                        jobs[j] = body.get("state")
            time.sleep(0.5)
            if stop.is_set() and time.time() - stop_at[0] > 300:
                return

    stop_at = [0.0]
    threading.Thread(target=sampler, daemon=True).start()
    follow = threading.Thread(target=follower, daemon=True)
    follow.start()

    total = int(args.minutes * 60 * args.rps)
    next_ingest = start + 2
    lag_max = 0.0
    for i in range(total):
        due = start + i / args.rps
        now = time.time()
        if due > now:
            time.sleep(due - now)
        else:
            lag_max = max(lag_max, now - due)
        if due >= next_ingest:
            work.put(("ingest", due, ingest_request()))
            next_ingest += args.ingest_every
            continue
        kind, mode, _, how = kinds[i % len(kinds)]
        flt = filters[i % len(filters)] if kind.endswith("_filter") else None
        work.put((kind, due, search(kind, mode, flt, how)))
    for _ in threads:
        work.put(None)
    for th in threads:
        th.join()
    elapsed = time.time() - start
    stop_at[0] = time.time()
    stop.set()
    follow.join(330)
    rss.append((round(time.time() - start, 1), rss_kib(pid)))

    # Every ingested document is found.
    missing = []
    for marker, job in ingested:
        st, body = call("POST", url + "/search", {"query": marker, "mode": "lexical", "top_k": 3})
        if st != 200 or not any(marker in h["text"] for h in body.get("results", [])):
            missing.append(marker)
    states = {}
    for s in jobs.values():
        states[s] = states.get(s, 0) + 1

    per_kind = {}
    for kind, lat in sorted(rec.latency.items()):
        if kind == "get_job":
            per_kind[kind] = {"requests": len(lat), "errors": rec.errors.get(kind, 0)}
            continue
        per_kind[kind] = {"requests": len(lat), "errors": rec.errors.get(kind, 0),
                          "p50_ms": round(pct(lat, 50) * 1000, 2), "p95_ms": round(pct(lat, 95) * 1000, 2),
                          "p99_ms": round(pct(lat, 99) * 1000, 2), "max_ms": round(max(lat) * 1000, 1)}
    searches = [x for k, v in rec.latency.items() if "search" in k for x in v]
    return {
        "minutes": args.minutes, "rps": args.rps, "elapsed_seconds": round(elapsed, 1),
        "modes": modes, "requests_total": sum(len(v) for v in rec.latency.values()),
        "errors_total": sum(rec.errors.values()), "error_examples": rec.examples,
        "degraded_notes": rec.notes, "client_lag_max_seconds": round(lag_max, 3),
        "per_kind": per_kind,
        "all_searches": {"requests": len(searches), "p50_ms": round(pct(searches, 50) * 1000, 2),
                         "p99_ms": round(pct(searches, 99) * 1000, 2)},
        "ingest": {"requests": counter[0], "documents": len(ingested), "jobs": states, "missing": missing},
        "rss_kib": rss, "memory": memory_verdict(rss),
    }


def memory_verdict(rss):
    """Mean RSS of the last minute against the second (the first is warm-up);
    for runs under 3 minutes, the last third against the second."""
    end = rss[-1][0] if rss else 0
    if end >= 180:
        second = [r for t, r in rss if 60 <= t < 120]
        last = [r for t, r in rss if t >= end - 60]
        basis = "mean RSS of the last minute vs the second minute"
    else:
        second = [r for t, r in rss if end / 3 <= t < 2 * end / 3]
        last = [r for t, r in rss if t >= 2 * end / 3]
        basis = "mean RSS of the last third vs the middle third (run under 3 minutes)"
    if not second or not last:
        return {"verdict": "unknown", "basis": "too few samples"}
    a, b = statistics.mean(second), statistics.mean(last)
    growth = b - a
    grows = growth > 0.10 * a and growth > 16 * 1024
    return {"verdict": "grows" if grows else "flat", "basis": basis, "second_mib": round(a / 1024, 1),
            "last_mib": round(b / 1024, 1), "growth_percent": round(100 * growth / a, 2)}


def report(r):
    print(f"\n== soak: {r['elapsed_seconds']} s at {r['rps']} requests/s; modes {r['modes']}; "
          f"model {r['model'] or 'none'}")
    print(f"requests {r['requests_total']}, errors {r['errors_total']}; the client fell behind its "
          f"schedule by at most {r['client_lag_max_seconds']} s")
    print("| kind | requests | errors | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k, v in r["per_kind"].items():
        if "p50_ms" in v:
            print(f"| {k} | {v['requests']} | {v['errors']} | {v['p50_ms']} | {v['p95_ms']} | {v['p99_ms']} "
                  f"| {v['max_ms']} |")
        else:
            print(f"| {k} | {v['requests']} | {v['errors']} | | | | |")
    a = r["all_searches"]
    print(f"all searches: {a['requests']}, p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms")
    for e in r["error_examples"][:5]:
        print(f"error example: {e}")
    if r["degraded_notes"]:
        print(f"notes on answers: {r['degraded_notes']}")
    i = r["ingest"]
    print(f"ingest: {i['requests']} requests, {i['documents']} documents, jobs {i['jobs']}, "
          f"not found afterwards: {len(i['missing'])} {i['missing'][:5]}")
    print("RSS (MiB) every 10 s: " + ", ".join(f"{t:.0f}s {k / 1024:.0f}" for t, k in r["rss_kib"]))
    m = r["memory"]
    print(f"memory: {m['verdict']} ({m.get('basis')}: {m.get('second_mib')} -> {m.get('last_mib')} MiB, "
          f"{m.get('growth_percent')} %)")


if __name__ == "__main__":
    main()
