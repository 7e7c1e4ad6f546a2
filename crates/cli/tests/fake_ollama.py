"""A stand-in for `ollama serve` in the launcher's tests (crates/cli/tests/launcher.rs).

It listens on $OLLAMA_HOST, records its environment to
$FAKE_OLLAMA_RECORD/<port>.json (so a test can check that each instance got
its own CUDA_VISIBLE_DEVICES and port), and answers the few routes the
launcher uses: /api/tags (health), /api/ps (loaded models), and
/api/generate or /api/chat, which load a model or, with keep_alive 0,
unload it.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

if sys.argv[1:] != ["serve"]:
    sys.exit(f"expected `serve`, got {sys.argv[1:]}")
host, port = os.environ["OLLAMA_HOST"].rsplit(":", 1)
record = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "OLLAMA_HOST", "OLLAMA_KEEP_ALIVE")}
record["pid"] = os.getpid()
with open(os.path.join(os.environ["FAKE_OLLAMA_RECORD"], f"{port}.json"), "w") as f:
    json.dump(record, f)

loaded = set()


class Handler(BaseHTTPRequestHandler):
    def send(self, body, code=200):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/api/tags":
            self.send({"models": [{"name": "tiny:latest", "model": "tiny:latest"}]})
        elif self.path == "/api/ps":
            self.send({"models": [{"name": m, "model": m} for m in sorted(loaded)]})
        else:
            self.send({"error": "not found"}, 404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path not in ("/api/generate", "/api/chat"):
            self.send({"error": "not found"}, 404)
            return
        model = body.get("model")
        if body.get("keep_alive") in (0, "0", "0s"):
            loaded.discard(model)
        else:
            loaded.add(model)
        self.send({"model": model, "done": True, "response": ""})


ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
