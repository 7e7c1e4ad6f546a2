#!/usr/bin/env bash
# Search load on the DataFactory service over loopback: requests per second
# and latency percentiles from wrk (Debian package `wrk`), on a store of
# 100,000+ chunks, idle side by side with a peer (bench/peer_search_service.py:
# FastAPI + uvicorn, 2 workers, over bm25s, same corpus, same wrk command and
# queries), then DataFactory alone while an ingest job runs.
#
#   pip install bm25s==0.3.16 numpy==2.4.6 fastapi==0.165.0 "uvicorn[standard]==0.54.0"
#   bash bench/serve_load.sh            # needs: cargo, python3, wrk
#
# Words only (no embedding model), so the figures are the service, the word
# index and SQLite, not the model.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# DF_BIN: a binary built beforehand (the build is skipped).
if [ -n "${DF_BIN:-}" ]; then DF="$DF_BIN"; else
  cargo build --release -q -p datafactory
  DF="$CARGO_TARGET_DIR/release/datafactory"
fi
WORK=$(mktemp -d)
SERVER=; PEER=
trap 'kill $SERVER $PEER 2>/dev/null || true; rm -rf "$WORK"' EXIT
export DATAFACTORY_EMBEDDING__MODEL=""
PORT=19123
PEER_PORT=19124
WRK=(wrk -t2 -c16 -d20s --latency)
SHOW="Requests/sec|Latency|^ +(50|90|99)%|Non-2xx|Socket errors"

python3 - "$WORK" <<'PY'
import json, random, sys
random.seed(7)
vocab = [f"w{i}" for i in range(20000)] + ["river", "engine", "copper", "harbor", "signal", "timber", "orbit", "canyon"]
def doc(i):
    return " ".join(random.choice(vocab) for _ in range(60)) + f" marker{i}"
with open(f"{sys.argv[1]}/corpus.jsonl", "w") as f:
    for i in range(100_000):
        f.write(json.dumps({"id": f"d{i}", "text": doc(i)}) + "\n")
with open(f"{sys.argv[1]}/more.json", "w") as f:
    json.dump({"documents": [{"id": f"m{i}", "text": doc(10**6 + i)} for i in range(30_000)]}, f)
PY

echo "== ingest 100,000 documents"
"$DF" --data-dir "$WORK/data" ingest "$WORK/corpus.jsonl" | sed -n 1p
"$DF" --data-dir "$WORK/data" stats | sed -n 1,2p

"$DF" --data-dir "$WORK/data" serve --address 127.0.0.1:$PORT 2>/dev/null &
SERVER=$!
until curl -sf "127.0.0.1:$PORT/health" >/dev/null; do sleep 0.1; done

echo "== peer: uvicorn --workers 2, FastAPI, bm25s over the same corpus"
PEER_CORPUS="$WORK/corpus.jsonl" python3 -m uvicorn --app-dir bench peer_search_service:app \
    --host 127.0.0.1 --port $PEER_PORT --workers 2 --no-access-log --log-level info 2>"$WORK/peer.log" &
PEER=$!
# Each worker builds its own index before it accepts: wait for both.
until [ "$(grep -c 'Application startup complete' "$WORK/peer.log")" -ge 2 ]; do
  kill -0 $PEER 2>/dev/null || { cat "$WORK/peer.log"; echo "the peer did not start (pip install ... above?)"; exit 1; }
  sleep 0.2
done

cat > "$WORK/search.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  local q = "w" .. (n * 7919 % 20000) .. "+w" .. (n * 104729 % 20000) .. "+river"
  return wrk.format("GET", "/search?mode=lexical&top_k=10&q=" .. q)
end
LUA

echo "== the same queries on both: top 10 documents (sanity)"
python3 - "$PORT" "$PEER_PORT" <<'PY'
import json, re, sys, urllib.request
def hits(port, q):
    url = f"http://127.0.0.1:{port}/search?mode=lexical&top_k=10&q={q}"
    with urllib.request.urlopen(url) as r:
        body = json.load(r)
    words = set(q.split("+"))
    # Per hit: the document (the marker word its text ends with: DataFactory's
    # ids are hashes) and how many of the query's words it holds.
    return [(re.search(r"marker(\d+)", h["text"]).group(1), len(words & set(h["text"].split())))
            for h in body.get("results", body.get("hits"))]
for n in (1, 2, 3):
    q = f"w{n * 7919 % 20000}+w{n * 104729 % 20000}+river"
    a, b = hits(sys.argv[1], q), hits(sys.argv[2], q)
    print(f"q={q}: query words held by hits 1..10: datafactory {[x[1] for x in a]}, "
          f"peer {[y[1] for y in b]}; top 3 documents: datafactory {[x[0] for x in a[:3]]}, "
          f"peer {[y[0] for y in b[:3]]}; top-10 overlap {len({x[0] for x in a} & {y[0] for y in b})}/10")
PY

echo "== warm-up (5 s each)"
for p in $PORT $PEER_PORT; do wrk -t2 -c16 -d5s -s "$WORK/search.lua" "http://127.0.0.1:$p" >/dev/null; done

echo "== search, idle (${WRK[*]}), one engine at a time, twice (A B A B)"
for round in 1 2; do
  for name in datafactory peer; do
    [ $name = datafactory ] && p=$PORT || p=$PEER_PORT
    echo "-- $name, round $round"
    "${WRK[@]}" -s "$WORK/search.lua" "http://127.0.0.1:$p" | tee "$WORK/wrk.$name.$round" | grep -E "$SHOW"
  done
done
kill $PEER; wait $PEER 2>/dev/null || true; PEER=

python3 - "$WORK" <<'PY'
import re, sys
def parse(name):
    t = open(f"{sys.argv[1]}/wrk.{name}").read()
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    pct = {}
    for p in (50, 90, 99):
        v, u = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s)\s*$", t, re.M).groups()
        pct[p] = float(v) * unit[u]
    return float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)), pct
print("| round | engine | requests/s | p50 | p90 | p99 |")
print("|---|---|---:|---:|---:|---:|")
for round in (1, 2):
    (dr, dp), (pr, pp) = parse(f"datafactory.{round}"), parse(f"peer.{round}")
    for n, r, p in (("DataFactory", dr, dp), ("peer: FastAPI + uvicorn (2 workers) + bm25s", pr, pp)):
        print(f"| {round} | {n} | {r:,.0f} | {p[50]:.2f} ms | {p[90]:.2f} ms | {p[99]:.2f} ms |")
    print(f"| {round} | ratio DataFactory / peer | {dr / pr:.2f} | {dp[50] / pp[50]:.2f} | {dp[90] / pp[90]:.2f} | {dp[99] / pp[99]:.2f} |")
PY

echo "== DataFactory: search while ingesting 30,000 more documents"
curl -s -X POST -H 'content-type: application/json' --data-binary @"$WORK/more.json" "127.0.0.1:$PORT/ingest" >/dev/null
"${WRK[@]}" -s "$WORK/search.lua" "http://127.0.0.1:$PORT" | grep -E "$SHOW"
curl -s "127.0.0.1:$PORT/ready"; echo
