#!/usr/bin/env bash
# Search load on the DataFactory service over loopback: requests per second
# and latency percentiles from wrk (Debian package `wrk`), on a store of
# 100,000+ chunks, first idle, then while an ingest job runs.
#
#   bash bench/serve_load.sh            # needs: cargo, python3, wrk
#
# Words only (no embedding model), so the figures are the service, the word
# index and SQLite, not the model.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p datafactory
DF="$CARGO_TARGET_DIR/release/datafactory"
WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
export DATAFACTORY_EMBEDDING__MODEL=""
PORT=19123

python3 - "$WORK" <<'PY'
import json, random, sys
random.seed(7)
words = open("/usr/share/dict/words").read().split() if False else None
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
"$DF" --data-dir "$WORK/data" ingest "$WORK/corpus.jsonl" | head -1
"$DF" --data-dir "$WORK/data" stats | head -2

"$DF" --data-dir "$WORK/data" serve --address 127.0.0.1:$PORT 2>/dev/null &
SERVER=$!
until curl -sf "127.0.0.1:$PORT/health" >/dev/null; do sleep 0.1; done

cat > "$WORK/search.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  local q = "w" .. (n * 7919 % 20000) .. "+w" .. (n * 104729 % 20000) .. "+river"
  return wrk.format("GET", "/search?mode=lexical&top_k=10&q=" .. q)
end
LUA

echo "== search, idle (2 threads, 16 connections, 20 s)"
wrk -t2 -c16 -d20s --latency -s "$WORK/search.lua" "http://127.0.0.1:$PORT" | grep -E "Requests/sec|Latency|50%|90%|99%"

echo "== search while ingesting 30,000 more documents"
curl -s -X POST -H 'content-type: application/json' --data-binary @"$WORK/more.json" "127.0.0.1:$PORT/ingest" >/dev/null
wrk -t2 -c16 -d20s --latency -s "$WORK/search.lua" "http://127.0.0.1:$PORT" | grep -E "Requests/sec|Latency|50%|90%|99%"
curl -s "127.0.0.1:$PORT/ready"; echo
