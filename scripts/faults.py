#!/usr/bin/env python3
"""Fault injection against a real DataFactory binary (issue 17, "Hardening").

    sudo python3 scripts/faults.py BINARY [--only disk_cli,readonly,...] [--json OUT]

Each fault is run for real on this machine and reported: what was done, what
the user saw (exit code and error line of the CLI; HTTP status, message and
job state of `datafactory serve`), and whether anything stored was lost (the
documents stored before the fault are all still there and found by a search
afterwards, `stats` is consistent, and a retry after the fault clears
finishes the work). Exit code 0 when no fault lost data or left the work
unfinished after the retry, 1 otherwise.

Faults (names for --only):

  disk_cli, disk_serve  a size-limited tmpfs as the data directory, filled by
                        an ingest (CLI; serve), then enlarged and the ingest retried
  readonly              the data directory remounted read-only (a tmpfs; root
                        ignores file modes): ingest, search, stats, serve
  pg_cli, pg_serve      a PostgreSQL of our own (scripts/start-test-postgres.sh)
                        restarted with `pg_ctl restart -m fast` mid-ingest
  llm_kill, llm_hang    the llama-server killed (SIGKILL) / hung (SIGSTOP)
                        mid-enrichment, with one and with two endpoints in the pool
  rerank_kill           the reranker service killed; a search with rerank on

Needs: root (mount, the PostgreSQL user), python3 (stdlib only);
DATAFACTORY_TEST_LLAMA_SERVER and DATAFACTORY_TEST_TINY_GGUF for the LLM faults
(scripts/build-llama-server.sh, scripts/make_tiny_llama_gguf.py); the tiny
reranker committed in crates/models/tests/fixtures for rerank_kill. Words
only (no embedding model) unless DATAFACTORY_TEST_MINILM is set and --embed
is given, so the faults, not the model, set the pace.
"""
import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = None
EMBED = None  # the embedding model folder, or "" for words only
REPORT = []


# ---------------------------------------------------------------- helpers

def log(msg):
    print(msg, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(extra=None):
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("DATAFACTORY_") and not k.startswith("DATAFACTORY_TEST_"):
            del env[k]
    env["DATAFACTORY_EMBEDDING__MODEL"] = EMBED
    env["NO_COLOR"] = "1"
    env.update(extra or {})
    return env


def df(data, *args, env=None, timeout=600, config=None):
    """Runs the binary; returns (exit code, stdout, stderr)."""
    cmd = [BIN, "--data-dir", data]
    if config:
        cmd += ["--config", config]
    cmd += list(args)
    try:
        p = subprocess.run(cmd, env=base_env(env), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return 124, e.stdout or "", f"(still running after {timeout} s: killed) " + (e.stderr or "")
    return p.returncode, p.stdout, p.stderr


def error_line(stderr):
    """The line a user reads: the first `error:` line, else the last line."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("error"):
            return ln.strip()[:400]
    for ln in lines:
        if "error" in ln.lower():
            return ln.strip()[:400]
    return lines[-1].strip()[:400] if lines else "(nothing on stderr)"


def warn_lines(stderr):
    return [ln.strip()[:300] for ln in stderr.splitlines() if "WARN" in ln or "warning" in ln.lower()][:3]


GROUP = 100  # documents per group word: a search finds a group whole (search.candidates is 150)


def corpus(path, prefix, n, words=80, seed=1):
    """JSONL of `n` documents; each holds its group's word `{prefix}g{i // GROUP}`
    and its own marker `{prefix}m{i}` at its end (one chunk holds both), so one
    search per group finds them all."""
    rnd = random.Random(seed)
    vocab = [f"v{i}" for i in range(5000)]
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join(rnd.choice(vocab) for _ in range(words))
            f.write(json.dumps({"id": f"{prefix}{i}", "title": f"{prefix} note {i}",
                                "text": f"{text} {prefix}g{i // GROUP} {prefix}m{i}",
                                "metadata": {"set": prefix}}) + "\n")
    return [f"{prefix}m{i}" for i in range(n)]


def groups(prefix, markers):
    return [f"{prefix}g{g}" for g in range((len(markers) + GROUP - 1) // GROUP)]


def markers_in(hits, markers):
    words = set()
    for h in hits:
        words.update(h["text"].split())
    return {m for m in markers if m in words}


def documents_of(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def found_cli(data, prefix, markers, config=None, env=None):
    """Markers of `markers` whose document a lexical search finds."""
    found = set()
    for g in groups(prefix, markers):
        rc, out, err = df(data, "search", "--json", "-m", "lexical", "-k", str(GROUP + 20), g,
                          env=env, config=config)
        if rc != 0:
            return None, error_line(err)
        found |= markers_in(json.loads(out)["results"], markers)
    return found, None


def stats_cli(data, config=None, env=None):
    rc, out, err = df(data, "stats", "--json", env=env, config=config)
    if not out.strip().startswith("{"):
        return rc, None, error_line(err)
    return rc, json.loads(out), None


def http(method, url, body=None, timeout=60):
    """(status, parsed JSON or text); status 0 on a transport error."""
    data = None
    headers = {}
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        raw = e.read().decode(errors="replace")
        status = e.code
    except (urllib.error.URLError, OSError) as e:
        return 0, f"transport error: {e}"
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


class Serve:
    """`datafactory serve` on a free loopback port."""

    def __init__(self, data, env=None, config=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="faults-serve-", suffix=".log", delete=False)
        cmd = [BIN, "--data-dir", data]
        if config:
            cmd += ["--config", config]
        cmd += ["serve", "--address", f"127.0.0.1:{self.port}"]
        self.proc = subprocess.Popen(cmd, env=base_env(env), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            if http("GET", self.url + "/health", timeout=2)[0] == 200:
                return
            time.sleep(0.1)

    def alive(self):
        return self.proc.poll() is None

    def output(self):
        with open(self.log.name) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log.name)

    def ingest(self, docs, wait=False, timeout=600):
        q = "?wait=true" if wait else ""
        return http("POST", f"{self.url}/ingest{q}", {"documents": docs}, timeout=timeout)

    def job(self, job_id, timeout=600):
        """Follows a job to its end: the last answer of GET /jobs/{id}."""
        deadline = time.time() + timeout
        while True:
            status, body = http("GET", f"{self.url}/jobs/{job_id}")
            if status != 200 or body.get("state") not in ("queued", "running") or time.time() > deadline:
                return status, body
            time.sleep(0.2)

    def found(self, prefix, markers, extra=None):
        found = set()
        for g in groups(prefix, markers):
            body = {"query": g, "mode": "lexical", "top_k": GROUP + 20}
            body.update(extra or {})
            status, res = http("POST", f"{self.url}/search", body)
            if status != 200:
                return None, f"{status} {str(res)[:300]}"
            found |= markers_in(res["results"], markers)
        return found, None


def job_error(body):
    """The reason a job's record gives, wherever it is."""
    if not isinstance(body, dict):
        return str(body)[:300]
    for k in ("error", "message"):
        if body.get(k):
            return str(body[k])[:300]
    summary = body.get("summary") or {}
    if isinstance(summary, dict):
        for k in ("error", "failed", "warnings"):
            if summary.get(k):
                return json.dumps(summary[k])[:300]
    return ""


def record(name, done, saw, lost, ok, notes=""):
    REPORT.append({"fault": name, "done": done, "saw": saw, "lost": lost, "ok": ok, "notes": notes})
    log(f"\n### {name}\n  done: {done}\n  user saw:")
    for s in saw:
        log(f"    - {s}")
    log(f"  data lost: {lost}\n  verdict: {'OK' if ok else 'PROBLEM'}{(' (' + notes + ')') if notes else ''}")


def mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)


def remount(path, opts):
    subprocess.run(["mount", "-o", f"remount,{opts}", path], check=True)


def umount(path):
    subprocess.run(["umount", "-l", path], check=False)


def check_kept(where, data, prefix, markers, config=None, env=None):
    """(lost description, ok) for markers that must all be found, with stats consistent."""
    found, err = found_cli(data, prefix, markers, config=config, env=env)
    rc, stats, serr = stats_cli(data, config=config, env=env)
    if found is None:
        return f"{where}: search failed: {err}", False
    missing = sorted(set(markers) - found)
    consistent = stats is not None and stats.get("consistent")
    text = (f"{where}: {len(found)}/{len(markers)} found"
            + (f" (missing {missing[:5]})" if missing else "")
            + f"; stats consistent: {consistent if stats else 'no answer: ' + str(serr)}"
            + (f" problems {stats.get('problems')}" if stats and stats.get("problems") else ""))
    return text, not missing and bool(consistent)


# ------------------------------------------------------------- the faults

def disk_cli(work):
    mnt = os.path.join(work, "disk-cli")
    mount_tmpfs(mnt, "3m")
    try:
        data = os.path.join(mnt, "data")
        a, b = os.path.join(work, "a.jsonl"), os.path.join(work, "big.jsonl")
        am = corpus(a, "alpha", 50)
        bm = corpus(b, "bravo", 3000, words=400, seed=2)
        saw = []
        rc, out, err = df(data, "ingest", a)
        saw.append(f"before: ingest of 50 documents: exit {rc}")
        rc, out, err = df(data, "ingest", b)
        saw.append(f"ingest of 3,000 documents (7 MB) into a 3 MB tmpfs: exit {rc}: `{error_line(err)}`")
        rc, s, serr = stats_cli(data)
        saw.append(f"`stats` with the disk still full: exit {rc}" + (f": `{serr}`" if serr else
                   f", consistent {s['consistent']}, {s['documents']} documents, problems {s['problems']}"))
        found, ferr = found_cli(data, "alpha", am)
        saw.append("search with the disk still full: " + (f"failed: `{ferr}`" if found is None
                   else f"{len(found)}/{len(am)} of the earlier documents found"))
        job_state = jobs_states(os.path.join(data, "datafactory.sqlite3"))
        saw.append(f"job records: {job_state}")
        remount(mnt, "size=80m")
        lost1, ok1 = check_kept("after freeing space", data, "alpha", am)
        rc, out, err = df(data, "ingest", "--json", b)
        summary = json.loads(out) if rc == 0 and out.startswith("{") else {}
        saw.append(f"retry after freeing space: exit {rc}, {summary.get('documents')}")
        lost2, ok2 = check_kept("after the retry", data, "bravo", bm)
        record("disk full, CLI ingest", "tmpfs of 3 MB as data dir; 50 documents ingested; then an ingest of "
               "3,000 documents fills it; `mount -o remount,size=80m`; the ingest run again",
               saw, f"{lost1}; {lost2}", ok1 and ok2)
    finally:
        umount(mnt)


def jobs_states(db):
    import sqlite3
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = c.execute("SELECT id, state FROM jobs ORDER BY created_at").fetchall()
        c.close()
        return ", ".join(f"{i} {s}" for i, s in rows)
    except Exception as e:  # noqa: BLE001 - report whatever happened
        return f"(could not read: {e})"


def disk_serve(work):
    mnt = os.path.join(work, "disk-serve")
    mount_tmpfs(mnt, "3m")
    srv = None
    try:
        data = os.path.join(mnt, "data")
        a, b, c = (os.path.join(work, n) for n in ("sa.jsonl", "sbig.jsonl", "smid.jsonl"))
        am = corpus(a, "charlie", 50)
        bm = corpus(b, "delta", 3000, words=400, seed=3)
        srv = Serve(data)
        saw = []
        st, body = srv.ingest(documents_of(a), wait=True)
        saw.append(f"before: POST /ingest?wait=true of 50 documents: {st} {body.get('state') if isinstance(body, dict) else body}")
        st, body = srv.ingest(documents_of(b))
        saw.append(f"POST /ingest of 3,000 documents (7 MB JSON) into the 3 MB tmpfs: {st} {str(body)[:300]}")
        # An upload of half the room left: it is stored, and its job fills the disk.
        vfs = os.statvfs(mnt)
        free = vfs.f_bavail * vfs.f_frsize
        cm = corpus(c, "lima", max(4, free // 2 // 12288), words=1500, seed=7)
        st, body = srv.ingest(documents_of(c))
        saw.append(f"POST /ingest of {len(cm)} documents of 1,500 words ({os.path.getsize(c) // 1024} KiB JSON, "
                   f"{free // 1024} KiB free: the upload fits, the job fills the disk): {st}")
        if st == 202:
            jst, job = srv.job(body["job_id"])
            summary = job.get("summary") or {}
            saw.append(f"GET /jobs/{{id}}: {jst}, state `{job.get('state')}`, reason `{job_error(job)}`, "
                       f"documents {summary.get('documents')}")
        st, ready = http("GET", srv.url + "/ready")
        saw.append(f"serve still running: {srv.alive()}; /ready: {st} ready {ready.get('ready')}, "
                   f"store {ready.get('store')}")
        found, ferr = srv.found("charlie", am)
        saw.append("search with the disk still full: " + (f"failed: {ferr}" if found is None
                   else f"{len(found)}/{len(am)} of the earlier documents found"))
        remount(mnt, "size=80m")
        results = []
        for docs in (c, b):
            st, body = srv.ingest(documents_of(docs), wait=True)
            results.append(f"{st} `{body.get('state') if isinstance(body, dict) else body}` "
                           f"{(body.get('summary') or {}).get('documents') if isinstance(body, dict) else ''}")
        saw.append(f"after freeing space (same serve), both POSTs again with wait=true: {'; '.join(results)}")
        found_a, _ = srv.found("charlie", am)
        found_b, _ = srv.found("delta", bm)
        found_c, _ = srv.found("lima", cm)
        srv.stop()
        srv = None
        lost1, ok1 = check_kept("earlier documents, after", data, "charlie", am)
        lost2, ok2 = check_kept("the long ones retried", data, "lima", cm)
        lost3, ok3 = check_kept("the 3,000 retried", data, "delta", bm)
        record("disk full, serve ingest", "serve on a 3 MB tmpfs; 50 documents ingested; an upload too big to "
               "store; a job of long documents whose upload fits and whose indexing fills it; remount with 80 MB; both POSTs again",
               saw, f"through serve: {len(found_a or ())}/{len(am)} earlier, {len(found_c or ())}/{len(cm)} and "
               f"{len(found_b or ())}/{len(bm)} retried found; {lost1}; {lost2}; {lost3}", ok1 and ok2 and ok3)
    finally:
        if srv:
            log(srv.output()[-2000:])
            srv.stop()
        umount(mnt)


def readonly(work):
    mnt = os.path.join(work, "ro")
    mount_tmpfs(mnt, "50m")
    srv = None
    try:
        data = os.path.join(mnt, "data")
        a = os.path.join(work, "ro.jsonl")
        am = corpus(a, "echo", 50)
        rc, _, _ = df(data, "ingest", a)
        saw = [f"before: ingest of 50 documents: exit {rc}"]
        remount(mnt, "ro")
        rc, out, err = df(data, "ingest", a)
        saw.append(f"ingest: exit {rc}: `{error_line(err)}`")
        found, ferr = found_cli(data, "echo", am)
        saw.append("search: " + (f"failed: `{ferr}`" if found is None else f"{len(found)}/{len(am)} found"))
        rc, s, serr = stats_cli(data)
        saw.append(f"stats: exit {rc}" + (f": `{serr}`" if serr else f", consistent {s['consistent']}"))
        srv = Serve(data)
        if srv.alive():
            st, body = srv.ingest(documents_of(a)[:1], wait=True)
            saw.append(f"serve started; POST /ingest: {st} {str(body)[:200]}")
        else:
            saw.append(f"serve: exit {srv.proc.returncode}: `{error_line(srv.output())}`")
        srv.stop()
        srv = None
        remount(mnt, "rw")
        lost, ok = check_kept("after remounting read-write", data, "echo", am)
        rc, _, err = df(data, "ingest", a)
        saw.append(f"ingest after remounting read-write: exit {rc} {error_line(err) if rc else ''}")
        record("read-only data directory", "50 documents ingested into a tmpfs; `mount -o remount,ro`; "
               "ingest, search, stats, serve; remount rw", saw, lost, ok and rc == 0)
    finally:
        if srv:
            srv.stop()
        umount(mnt)


# ------------------------------------------------------------- PostgreSQL

class Postgres:
    def __init__(self):
        out = subprocess.run(["bash", os.path.join(ROOT, "scripts/start-test-postgres.sh")],
                             capture_output=True, text=True, check=True).stdout
        env = dict(line.split(" ", 1)[1].split("=", 1) for line in out.splitlines() if line.startswith("export "))
        self.url = env["DATAFACTORY_TEST_POSTGRES"]
        self.dir = env["DATAFACTORY_TEST_POSTGRES_DIR"]
        self.bin = env["DATAFACTORY_TEST_POSTGRES_BIN"]

    def restart(self):
        t = time.time()
        subprocess.run(["runuser", "-u", "datafactory-pg", "--", f"{self.bin}/pg_ctl", "-D",
                        f"{self.dir}/data", "-m", "fast", "-w", "restart", "-l", f"{self.dir}/server.log"],
                       capture_output=True, check=True)
        return time.time() - t

    def count(self, schema):
        """Documents in `schema` (None while the table is missing or the server is down)."""
        p = subprocess.run([f"{self.bin}/psql", self.url, "-tAc", f"SELECT count(*) FROM {schema}.documents"],
                           capture_output=True, text=True)
        return int(p.stdout) if p.returncode == 0 and p.stdout.strip().isdigit() else None

    def jobs(self, schema):
        p = subprocess.run([f"{self.bin}/psql", self.url, "-tAc",
                            f"SELECT id || ' ' || state FROM {schema}.jobs ORDER BY created_at"],
                           capture_output=True, text=True)
        return ", ".join(p.stdout.split("\n")).strip(", ") if p.returncode == 0 else p.stderr.strip()

    def restart_when(self, schema, at_least, proc_alive, timeout=300):
        """Restarts once `schema` holds `at_least` documents (mid-ingest);
        returns (documents then, seconds the restart took), or None if the
        ingest ended first."""
        deadline = time.time() + timeout
        while time.time() < deadline and proc_alive():
            n = self.count(schema)
            if n is not None and n >= at_least:
                return n, self.restart()
            time.sleep(0.05)
        return None

    def stop(self):
        subprocess.run(["bash", os.path.join(ROOT, "scripts/start-test-postgres.sh"), "stop", self.dir])


def pg_env(pg, schema):
    return {"DATAFACTORY_STORE__BACKEND": "postgres", "DATAFACTORY_STORE__URL": pg.url,
            "DATAFACTORY_STORE__SCHEMA": schema}


def pg_cli(work, pg):
    data = os.path.join(work, "pg-cli")
    env = pg_env(pg, "faults_cli")
    a, b = os.path.join(work, "pa.jsonl"), os.path.join(work, "pb.jsonl")
    am = corpus(a, "foxtrot", 50)
    bm = corpus(b, "golf", 3000, words=200, seed=4)
    rc, _, err = df(data, "ingest", a, env=env)
    saw = [f"before: ingest of 50 documents: exit {rc} {error_line(err) if rc else ''}"]
    p = subprocess.Popen([BIN, "--data-dir", data, "ingest", "--json", b], env=base_env(env),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    when = pg.restart_when("faults_cli", 50 + 300, lambda: p.poll() is None)
    saw.append("`pg_ctl restart -m fast` " + (f"with {when[0] - 50} of the 3,000 documents stored (took {when[1]:.1f} s)"
                                               if when else "NOT DONE: the ingest ended first"))
    try:
        out, err = p.communicate(timeout=600)
        if out.startswith("{"):
            s = json.loads(out)
            saw.append(f"the ingest: exit {p.returncode} after {s['elapsed_seconds']:.1f} s, documents "
                       f"{s['documents']}, failed {[(f.get('source'), f.get('error')) for f in s['failed']][:2]}")
        else:
            saw.append(f"the ingest: exit {p.returncode}: `{error_line(err)}`")
    except subprocess.TimeoutExpired:
        p.kill()
        saw.append("the ingest HUNG: still running after 600 s (killed)")
    saw.append(f"job records: {pg.jobs('faults_cli')}")
    lost1, ok1 = check_kept("earlier documents", data, "foxtrot", am, env=env)
    rc, out, err = df(data, "ingest", "--json", b, env=env)
    saw.append(f"retry: exit {rc} {json.loads(out)['documents'] if rc == 0 else error_line(err)}")
    lost2, ok2 = check_kept("after the retry", data, "golf", bm, env=env)
    record("PostgreSQL restarted mid-ingest, CLI", "own PostgreSQL; 50 documents; `pg_ctl restart -m fast` "
           "once 300 of an ingest of 3,000 are stored; the ingest run again", saw, f"{lost1}; {lost2}", ok1 and ok2)


def pg_serve(work, pg):
    data = os.path.join(work, "pg-serve")
    env = pg_env(pg, "faults_serve")
    a, b = os.path.join(work, "psa.jsonl"), os.path.join(work, "psb.jsonl")
    am = corpus(a, "hotel", 50)
    bm = corpus(b, "india", 3000, words=200, seed=5)
    srv = Serve(data, env=env)
    try:
        st, body = srv.ingest(documents_of(a), wait=True)
        saw = [f"before: POST /ingest?wait=true of 50 documents: {st} {body.get('state') if isinstance(body, dict) else body}"]
        st, body = srv.ingest(documents_of(b))
        job_id = body.get("job_id") if isinstance(body, dict) else None
        when = pg.restart_when("faults_serve", 50 + 300,
                               lambda: http("GET", f"{srv.url}/jobs/{job_id}")[1].get("state") in ("queued", "running"))
        saw.append("`pg_ctl restart -m fast` " + (f"with {when[0] - 50} of the 3,000 documents stored (took "
                                                   f"{when[1]:.1f} s)" if when else "NOT DONE: the job ended first"))
        st, r = http("GET", srv.url + "/ready")
        saw.append(f"GET /ready right after: {st} {str(r)[:160]}")
        if job_id:
            jst, job = srv.job(job_id, timeout=300)
            saw.append(f"GET /jobs/{{id}}: {jst}, state `{job.get('state')}`, reason `{job_error(job)}`, "
                       f"documents {(job.get('summary') or {}).get('documents')}")
        saw.append(f"job records: {pg.jobs('faults_serve')}")
        found, ferr = srv.found("hotel", am)
        saw.append("search after: " + (f"failed: {ferr}" if found is None else f"{len(found)}/{len(am)} earlier found"))
        st, body = srv.ingest(documents_of(b), wait=True)
        saw.append(f"retry POST /ingest?wait=true: {st}, state `{body.get('state') if isinstance(body, dict) else body}`, "
                   f"documents {(body.get('summary') or {}).get('documents') if isinstance(body, dict) else ''}")
    finally:
        log(srv.output()[-1500:])
        srv.stop()
    lost1, ok1 = check_kept("earlier documents", data, "hotel", am, env=env)
    lost2, ok2 = check_kept("after the retry", data, "india", bm, env=env)
    record("PostgreSQL restarted mid-ingest, serve", "serve on our PostgreSQL; 50 documents; a job of 3,000; "
           "`pg_ctl restart -m fast` once 300 are stored; the same POST again", saw, f"{lost1}; {lost2}", ok1 and ok2)


# ------------------------------------------------------------------- LLMs

class Llama:
    def __init__(self, slots=2, ctx=4096):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [os.environ["DATAFACTORY_TEST_LLAMA_SERVER"], "-m", os.environ["DATAFACTORY_TEST_TINY_GGUF"],
             "--host", "127.0.0.1", "--port", str(self.port), "-np", str(slots), "-c", str(slots * ctx),
             "-t", "1", "-tb", "1", "--no-webui", "--no-repack", "-b", "512", "-ub", "512"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while http("GET", self.url + "/health", timeout=2)[0] != 200:
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("llama-server did not start")
            time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


def llm_config(path, urls, timeout):
    endpoints = "".join(
        f"""
[[enrichment.endpoints]]
kind = "openai"
url = "{u}"
model = "tiny"
slots = 2
context_tokens = 4096
tokenize = true
extra = {{ logit_bias = [[2, false], [4, false]] }}
""" for u in urls)
    with open(path, "w") as f:
        f.write(f"""[enrichment]
mode = "auto"
max_answer_tokens = 24
request_timeout_seconds = {timeout}
backoff_ms = 100
{endpoints}""")


def llm_fault(work, how, n_servers, timeout=10):
    name = f"llm_{how}_{n_servers}"
    data = os.path.join(work, name)
    cfg = os.path.join(work, name + ".toml")
    docs = os.path.join(work, name + ".jsonl")
    markers = corpus(docs, f"juliet{how}{n_servers}x", 60, words=120, seed=6)
    prefix = f"juliet{how}{n_servers}x"
    servers = [Llama() for _ in range(n_servers)]
    saw = []
    try:
        llm_config(cfg, [s.url for s in servers], timeout)
        t0 = time.time()
        p = subprocess.Popen([BIN, "--data-dir", data, "--config", cfg, "ingest", "--json", docs],
                             env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(4)
        victim = servers[0]
        if how == "kill":
            victim.proc.kill()
            victim.proc.wait()
        else:
            victim.proc.send_signal(signal.SIGSTOP)
        saw.append(f"{'SIGKILL' if how == 'kill' else 'SIGSTOP'} to 1 of {n_servers} llama-server(s) "
                   f"4 s into the ingest (enrichment.request_timeout_seconds = {timeout})")
        try:
            out, err = p.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            saw.append("the ingest HUNG: still running after 900 s (killed)")
        took = time.time() - t0
        if out.startswith("{"):
            s = json.loads(out)
            e = s["enrichment"]
            eps = ", ".join(f"{x['url'].rsplit(':', 1)[1]}: {x['requests']} requests {x['failures']} failures "
                            f"up={x['up']}" for x in e["endpoints"])
            saw.append(f"ingest: exit {p.returncode} after {took:.0f} s; contexts {e['chunks']}; endpoints {eps}; "
                       f"documents {s['documents']}; warnings {s['warnings'][:2]}")
        else:
            saw.append(f"ingest: exit {p.returncode} after {took:.0f} s: `{error_line(err)}`")
        lost1, ok1 = check_kept("after the fault", data, prefix, markers, config=cfg)
        # The fault clears: a fresh server in the dead/hung one's place.
        victim.stop()
        servers[0] = Llama()
        llm_config(cfg, [s.url for s in servers], timeout)
        rc, out, err = df(data, "ingest", "--json", docs, config=cfg)
        if rc == 0:
            s = json.loads(out)
            saw.append(f"re-ingest with the server back: exit 0, documents {s['documents']}, contexts "
                       f"{s['enrichment']['chunks']}")
            done = s["enrichment"]["chunks"]["fallback"] == 0
        else:
            saw.append(f"re-ingest: exit {rc}: `{error_line(err)}`")
            done = False
        lost2, ok2 = check_kept("after the re-ingest", data, prefix, markers, config=cfg)
        llm_left = count_contexts(os.path.join(data, "datafactory.sqlite3"))
        record(f"LLM server {'killed' if how == 'kill' else 'hung (SIGSTOP)'}, {n_servers} endpoint(s)",
               f"ingest of 60 documents with enrichment over {n_servers} llama-server(s) (tiny model); "
               f"the first {'killed' if how == 'kill' else 'stopped'} 4 s in; then replaced and the ingest re-run",
               saw, f"{lost1}; {lost2}; chunk contexts in the store after the re-run: {llm_left}",
               ok1 and ok2 and done)
    finally:
        for s in servers:
            s.stop()


def count_contexts(db):
    import sqlite3
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = c.execute("SELECT json_extract(context, '$.kind'), COUNT(*) FROM chunks GROUP BY 1").fetchall()
        c.close()
        return dict(rows)
    except Exception as e:  # noqa: BLE001
        return f"(could not read: {e})"


# --------------------------------------------------------------- reranker

def rerank_kill(work):
    data = os.path.join(work, "rerank")
    docs = os.path.join(work, "rr.jsonl")
    markers = corpus(docs, "kilo", 30)
    rc, _, _ = df(data, "ingest", docs)
    port = free_port()
    model = os.path.join(ROOT, "crates/models/tests/fixtures/tiny-xlmr-reranker")
    rr = subprocess.Popen([BIN, "--data-dir", data, "rerank-server", "--address", f"127.0.0.1:{port}"],
                          env=base_env({"DATAFACTORY_RERANK__MODEL": model, "DATAFACTORY_RERANK__DEVICE": "cpu"}),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while http("GET", f"http://127.0.0.1:{port}/health", timeout=2)[0] != 200 and time.time() < deadline:
        time.sleep(0.1)
    srv = Serve(data, env={"DATAFACTORY_RERANK__MODE": "remote", "DATAFACTORY_RERANK__URL": f"http://127.0.0.1:{port}",
                           "DATAFACTORY_RERANK__TIMEOUT_SECONDS": "5", "DATAFACTORY_REMOTE__DOWN_SECONDS": "5"})
    saw = []
    try:
        # Words of different weights, so the fused order has no ties.
        q = {"query": "kilog0 kilom3 kilom7 kilom11 v1 v2 v3 v4", "mode": "lexical", "top_k": 5, "rerank": True}
        st, up = http("POST", srv.url + "/search", q)
        saw.append(f"with the reranker up: {st}, rerank {up.get('rerank')}")

        def timed(n):
            out = []
            for _ in range(n):
                t = time.time()
                st, body = http("POST", srv.url + "/search", q)
                out.append((st, round(time.time() - t, 2), body.get("rerank", {}).get("reranked")))
            return out
        # Hung: SIGSTOP (rerank.timeout_seconds = 5, remote.down_seconds = 5).
        rr.send_signal(signal.SIGSTOP)
        hung = timed(3)
        saw.append(f"reranker hung (SIGSTOP): 3 searches (status, seconds, reranked): {hung}")
        rr.send_signal(signal.SIGCONT)
        time.sleep(6)
        back = timed(1)
        saw.append(f"SIGCONT, 6 s later: {back}")
        rr.kill()
        rr.wait()
        st, down = http("POST", srv.url + "/search", q)
        st2, plain = http("POST", srv.url + "/search", dict(q, rerank=False))
        # Equal fused scores may come in either order (the reranked search
        # fetched rerank.candidates, the other top_k): compare the scores.
        order = [round(h["score"], 5) for h in down.get("results", [])]
        fused = [round(h["score"], 5) for h in plain.get("results", [])]
        same = bool(order) and order == fused
        if not same:
            log(f"rerank failed: {order}\nrerank off:    {fused}")
        saw.append(f"after SIGKILL of the reranker: {st}, rerank {down.get('rerank')}, notes {down.get('notes')}; "
                   f"results in the fused order (same as rerank=false): {same}")
        took = []
        for _ in range(5):
            t = time.time()
            http("POST", srv.url + "/search", q)
            took.append(round(time.time() - t, 3))
        saw.append(f"5 more searches with rerank on, seconds each: {took}")
        st, metrics = http("GET", srv.url + "/metrics")
        line = [x for x in str(metrics).splitlines() if x.startswith("datafactory_rerank_failures_total")]
        saw.append(f"/metrics: {line}")
        rc, out, err = df(data, "search", "--json", "-m", "lexical", "-k", "5", q["query"],
                          env={"DATAFACTORY_RERANK__MODE": "remote",
                               "DATAFACTORY_RERANK__URL": f"http://127.0.0.1:{port}"})
        cli = json.loads(out) if rc == 0 else {}
        saw.append(f"CLI search with the reranker down: exit {rc}, notes {cli.get('notes')}")
        ok = (st == 200 and same and down.get("rerank", {}).get("reranked") is False and back[0][2] is True
              and all(h[0] == 200 for h in hung)
              and any("rerank" in n for n in down.get("notes", [])))
    finally:
        srv.stop()
        if rr.poll() is None:
            rr.kill()
    lost, ok2 = check_kept("after", data, "kilo", markers)
    record("reranker service killed", "serve with rerank.mode = remote over `datafactory rerank-server` (tiny "
           "model); the reranker stopped (SIGSTOP) then continued, then SIGKILLed; POST /search with rerank on", saw, lost, ok and ok2)


# ------------------------------------------------------------------- main

FAULTS = ["disk_cli", "disk_serve", "readonly", "pg_cli", "pg_serve", "llm_kill", "llm_hang", "rerank_kill"]


def main():
    global BIN, EMBED
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary")
    ap.add_argument("--only", default=",".join(FAULTS))
    ap.add_argument("--json", help="write the report here as JSON")
    ap.add_argument("--embed", action="store_true", help="embed with DATAFACTORY_TEST_MINILM")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (mounts are undone)")
    ap.add_argument("--llm-timeout", type=int, default=10,
                    help="enrichment.request_timeout_seconds for the LLM faults (default 10)")
    args = ap.parse_args()
    BIN = os.path.abspath(args.binary)
    EMBED = os.environ.get("DATAFACTORY_TEST_MINILM", "") if args.embed else ""
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(only) - set(FAULTS)
    if unknown:
        sys.exit(f"unknown fault(s) {sorted(unknown)}; known: {FAULTS}")
    if os.geteuid() != 0 and set(only) & {"disk_cli", "disk_serve", "readonly", "pg_cli", "pg_serve"}:
        sys.exit("the disk, read-only and PostgreSQL faults need root (mount, runuser)")
    work = tempfile.mkdtemp(prefix="datafactory-faults-")
    log(f"binary {BIN}; work dir {work}; model {EMBED or 'none (words only)'}")
    pg = None
    try:
        for name in only:
            log(f"\n== {name}")
            try:
                if name in ("pg_cli", "pg_serve"):
                    pg = pg or Postgres()
                    globals()[name](work, pg)
                elif name in ("llm_kill", "llm_hang"):
                    for n in (1, 2):
                        llm_fault(work, name.split("_")[1], n, timeout=args.llm_timeout)
                else:
                    globals()[name](work)
            except Exception as e:  # noqa: BLE001 - one fault's failure must not hide the others
                import traceback
                traceback.print_exc()
                record(name, "(the script failed)", [repr(e)], "unknown", False)
    finally:
        if pg:
            pg.stop()
        if not args.keep:
            subprocess.run(["rm", "-rf", work])
    log("\n== summary")
    for r in REPORT:
        log(f"{'OK     ' if r['ok'] else 'PROBLEM'} {r['fault']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(REPORT, f, indent=2)
    sys.exit(0 if all(r["ok"] for r in REPORT) else 1)


if __name__ == "__main__":
    main()
