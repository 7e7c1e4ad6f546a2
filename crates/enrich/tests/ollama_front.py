#!/usr/bin/env python3
"""A small Ollama-compatible front over a llama-server, for tests of the
Ollama client: no real Ollama can be installed on these machines.

It serves the documented Ollama routes and fields the client uses:
  GET  /api/tags   {"models": [{"name", "model", "modified_at", "size", "digest", "details"}]}
  GET  /api/ps     {"models": [{"name", "model", "size", "digest", "expires_at", "size_vram"}]}
  POST /api/chat   {"model", "messages", "stream", "keep_alive", "options": {"num_ctx",
                    "temperature", "num_predict"}} -> {"model", "created_at", "message": {"role",
                    "content"}, "done", "done_reason", "total_duration", "load_duration",
                    "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"}
                   (durations in nanoseconds); `messages: []` with `keep_alive: 0` unloads.
                   With "stream": true (Ollama's default) the answer is newline-delimited JSON
                   (application/x-ndjson, chunked): an object per piece, `"done": false`, with
                   `message.content` the piece, then the last with `"done": true`, empty content
                   and the counts above.
Like Ollama, a prompt longer than `num_ctx` would be cut; this front refuses it
with HTTP 400 instead, so a test sees any prompt the client failed to fit.
The answer generation is the real llama-server's (`/v1/chat/completions`).
"""
import argparse
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = {"loaded_until": None, "lock": threading.Lock(), "requests": 0, "num_ctx": []}


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + "Z"


def keep_alive_seconds(v):
    if v is None:
        return 300
    if isinstance(v, (int, float)):
        return float(v)
    v = str(v)
    for suffix, mult in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if v.endswith(suffix):
            return float(v[: -len(suffix)]) * mult
    return float(v)


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def model_entry(self):
        return {"name": ARGS.model, "model": ARGS.model, "size": 487680, "digest": "0" * 64}

    def do_GET(self):
        if self.path == "/api/tags":
            m = self.model_entry()
            m.update({"modified_at": iso(time.time()), "details": {"family": "llama", "format": "gguf"}})
            return self.send(200, {"models": [m]})
        if self.path == "/api/ps":
            with STATE["lock"]:
                until = STATE["loaded_until"]
            if until is None or until < time.time():
                return self.send(200, {"models": []})
            m = self.model_entry()
            m.update({"expires_at": iso(until), "size_vram": 0})
            return self.send(200, {"models": [m]})
        if self.path == "/":
            return self.send(200, "Ollama is running")
        if self.path == "/test/num_ctx":
            # Not Ollama's: the num_ctx of every chat request so far, for tests.
            with STATE["lock"]:
                return self.send(200, list(STATE["num_ctx"]))
        self.send(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        try:
            req = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self.send(400, {"error": "invalid JSON"})
        if self.path != "/api/chat":
            return self.send(404, {"error": "not found"})
        def tagged(name):
            return name if ":" in name else name + ":latest"

        if tagged(str(req.get("model"))) != tagged(ARGS.model):
            return self.send(404, {"error": f"model '{req.get('model')}' not found"})
        keep = keep_alive_seconds(req.get("keep_alive"))
        messages = req.get("messages") or []
        if not messages:
            with STATE["lock"]:
                STATE["loaded_until"] = None if keep == 0 else time.time() + keep
            return self.send(200, {"model": ARGS.model, "created_at": iso(time.time()),
                                   "message": {"role": "assistant", "content": ""},
                                   "done_reason": "unload" if keep == 0 else "load", "done": True})
        stream = bool(req.get("stream", True))
        options = req.get("options") or {}
        num_ctx = int(options.get("num_ctx", 2048))
        with STATE["lock"]:
            STATE["num_ctx"].append(num_ctx)
        num_predict = int(options.get("num_predict", 128))
        prompt_text = "".join(m.get("content", "") for m in messages)
        n_prompt = len(post(ARGS.backend + "/tokenize", {"content": prompt_text})["tokens"])
        if n_prompt + num_predict > num_ctx:
            return self.send(400, {"error": f"prompt ({n_prompt}) + num_predict ({num_predict}) > num_ctx ({num_ctx})"})
        started = time.time()
        body = {"messages": messages, "stream": False, "max_tokens": num_predict,
                "temperature": options.get("temperature", 0.8), "cache_prompt": True}
        for k in ("logit_bias",):
            if k in req:
                body[k] = req[k]
        if stream:
            return self.stream_chat(body, keep, started)
        out = post(ARGS.backend + "/v1/chat/completions", body)
        with STATE["lock"]:
            STATE["loaded_until"] = time.time() + keep if keep != 0 else None
        finish = out["choices"][0].get("finish_reason", "stop")
        answer = self.final(out.get("timings", {}), out["usage"], finish, started)
        answer["message"]["content"] = out["choices"][0]["message"]["content"]
        self.send(200, answer)

    def final(self, t, usage, finish, started):
        return {
            "model": ARGS.model,
            "created_at": iso(time.time()),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "length" if finish == "length" else "stop",
            "total_duration": int((time.time() - started) * 1e9),
            "load_duration": 0,
            "prompt_eval_count": int(t.get("prompt_n", usage.get("prompt_tokens", 0))),
            "prompt_eval_duration": int(t.get("prompt_ms", 0) * 1e6),
            "eval_count": int(t.get("predicted_n", usage.get("completion_tokens", 0))),
            "eval_duration": int(t.get("predicted_ms", 0) * 1e6),
        }

    def stream_chat(self, body, keep, started):
        """Ollama's streamed answer, from llama-server's server-sent events."""
        body = dict(body, stream=True, stream_options={"include_usage": True})
        req = urllib.request.Request(ARGS.backend + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def line(obj):
            data = (json.dumps(obj) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        timings, usage, finish = {}, {}, "stop"
        with urllib.request.urlopen(req, timeout=600) as r:
            for raw in r:
                raw = raw.strip()
                if not raw.startswith(b"data:"):
                    continue
                data = raw[5:].strip()
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                timings = event.get("timings", timings)
                usage = event.get("usage", usage)
                for choice in event.get("choices", []):
                    finish = choice.get("finish_reason") or finish
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        line({"model": ARGS.model, "created_at": iso(time.time()),
                              "message": {"role": "assistant", "content": piece}, "done": False})
        with STATE["lock"]:
            STATE["loaded_until"] = time.time() + keep if keep != 0 else None
        line(self.final(timings, usage, finish, started))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--model", required=True)
    ARGS = p.parse_args()
    ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler).serve_forever()
