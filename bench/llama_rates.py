#!/usr/bin/env python3
"""Prompt (prefill) and decode tokens/s per slot of a real llama-server.

Calibrates the enrichment simulator's `GpuModel` (bench/src/enrich.rs) against
a llama-server on this machine: for each slot count (1 and 2 by default) it
starts llama-server with `-np SLOTS`, sends SLOTS requests at once (one per
slot) for each prompt length, and reads llama-server's own `timings` from each
`/completion` answer (`prompt_per_second`, `predicted_per_second`: the rates
one slot saw while the others ran beside it). Every prompt is new text and
`cache_prompt` is off, so nothing comes from a prefix cache. The answers are
forced to `--decode` tokens (`ignore_eos`).

    python3 bench/llama_rates.py LLAMA_SERVER MODEL.gguf [--slots 1,2]
        [--prompts 128,512,2048] [--decode 64] [--threads 2] [--repeat 3]
        [--server-args "--no-repack"]

Prints one Markdown table row per (slots, prompt length) with the median over
`--repeat` rounds, then the medians the simulator takes
(`ENRICH_BENCH_PREFILL_TPS`, `ENRICH_BENCH_DECODE_TPS`).
Only the standard library.
"""

import argparse
import json
import random
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

WORDS = (
    "revenue the quarter grew by percent report section table shows of and costs market region sales "
    "north south growth margin year total income net operating cash flow segment customer product"
).split()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, timeout=600):
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def text_of(tokens, rng):
    # About one token per word for these English words with Gemma's and
    # Llama's tokenizers; the answer's prompt_n says what it really was.
    return " ".join(rng.choice(WORDS) for _ in range(tokens))


def start_server(binary, model, slots, threads, ctx_per_slot, extra):
    port = free_port()
    args = [binary, "-m", model, "--host", "127.0.0.1", "--port", str(port), "-np", str(slots),
            "-c", str(slots * ctx_per_slot), "-t", str(threads), "-tb", str(threads), "--no-webui"]
    args += shlex.split(extra)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        if proc.poll() is not None:
            sys.exit(f"llama-server exited with status {proc.returncode}: {' '.join(args)}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.time() > deadline:
            proc.kill()
            sys.exit(f"llama-server did not become healthy in 120 s: {' '.join(args)}")
        time.sleep(0.2)


def round_of(url, slots, prompt_tokens, decode, rng):
    prompts = [text_of(prompt_tokens, rng) for _ in range(slots)]
    answers = [None] * slots
    errors = []

    def one(i):
        try:
            answers[i] = post(url + "/completion", {
                "prompt": prompts[i], "n_predict": decode, "ignore_eos": True, "cache_prompt": False,
                "temperature": 0.0, "id_slot": i,
            })
        except Exception as e:  # reported below with the request it belongs to
            errors.append(f"request {i}: {e}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(slots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit("; ".join(errors))
    out = []
    for a in answers:
        t = a.get("timings")
        if not t or "prompt_per_second" not in t:
            sys.exit(f"the answer has no timings: {json.dumps(a)[:300]}")
        if t["predicted_n"] != decode:
            sys.exit(f"asked for {decode} tokens, got {t['predicted_n']}")
        out.append(t)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("server")
    p.add_argument("model")
    p.add_argument("--slots", default="1,2")
    p.add_argument("--prompts", default="128,512,2048")
    p.add_argument("--decode", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--server-args", default="--no-repack")
    a = p.parse_args()
    try:
        slot_counts = [int(x) for x in a.slots.split(",")]
        prompt_lengths = [int(x) for x in a.prompts.split(",")]
    except ValueError:
        sys.exit(f"--slots and --prompts take comma-separated integers, got {a.slots!r} and {a.prompts!r}")
    if min(slot_counts + prompt_lengths) < 1 or a.decode < 1 or a.repeat < 1:
        sys.exit("--slots, --prompts, --decode and --repeat must be positive")
    rng = random.Random(1)
    ctx = max(prompt_lengths) * 2 + a.decode + 256
    print(f"llama-server {a.server} -t {a.threads} {a.server_args}; model {a.model}; "
          f"{a.decode} tokens decoded per request; median of {a.repeat} rounds; "
          f"load average before: {open('/proc/loadavg').read().split()[0]}")
    print()
    print("| slots | prompt tokens | prompt tok/s per slot | decode tok/s per slot | rounds (prompt; decode) |")
    print("|---|---|---|---|---|")
    prefill_all, decode_all = {}, {}
    for slots in slot_counts:
        proc, url = start_server(a.server, a.model, slots, a.threads, ctx, a.server_args)
        try:
            round_of(url, slots, 32, 8, rng)  # warm-up: first-call allocations
            for n in prompt_lengths:
                pp, tg, tokens = [], [], []
                for _ in range(a.repeat):
                    for t in round_of(url, slots, n, a.decode, rng):
                        pp.append(t["prompt_per_second"])
                        tg.append(t["predicted_per_second"])
                        tokens.append(t["prompt_n"])
                pm, tm = statistics.median(pp), statistics.median(tg)
                prefill_all.setdefault(slots, []).append(pm)
                decode_all.setdefault(slots, []).append(tm)
                print(f"| {slots} | {int(statistics.median(tokens))} | {pm:.0f} | {tm:.1f} | "
                      f"{', '.join(f'{x:.0f}' for x in pp)}; {', '.join(f'{x:.1f}' for x in tg)} |")
        finally:
            proc.kill()
            proc.wait()
    print()
    for slots in slot_counts:
        print(f"slots {slots}: ENRICH_BENCH_PREFILL_TPS={statistics.median(prefill_all[slots]) * slots:.0f} "
              f"(per slot x slots: the server's prompt rate) "
              f"ENRICH_BENCH_DECODE_TPS={statistics.median(decode_all[slots]):.1f} (per sequence)")


if __name__ == "__main__":
    main()
