#!/usr/bin/env python3
"""sentence-transformers (PyTorch) side of the GPU check: the same model
directory and passages as `datafactory-bench embed`, in DTYPE on cuda:0,
normalised; warm-up on 32 passages, then REPEATS timed runs over all, for
each batch size of --batches (one JSON line each). With --ours (DataFactory's
vectors, NAME=FILE.f32, repeatable) each line gives the lowest and mean
cosine against each; with --queries (a JSON list of strings) it also times
each query embedded alone (p50, p90, mean in ms, after 10 untimed), as a
search does.

    python3 st_embed.py MODEL_DIR PASSAGES.json [--batches 32,128] [--repeats 3] [--dtype f16]
        [--ours fused=VECTORS.f32 ...] [--queries QUERIES.json]
"""
import argparse, json, time

import numpy as np
import torch
from sentence_transformers import SentenceTransformer


def percentile(values, p):
    s = sorted(values)
    rank = max(1, min(len(s), int(np.ceil(p / 100 * len(s)))))
    return s[rank - 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("passages")
    ap.add_argument("--ours", action="append", default=[], help="NAME=FILE.f32 (repeatable)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="32")
    ap.add_argument("--dtype", default="f16", choices=["f16", "bf16", "f32"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--queries")
    args = ap.parse_args()
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    texts = json.load(open(args.passages))
    model = SentenceTransformer(args.model, device=args.device, model_kwargs={"dtype": dtype})

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    for batch in [int(b) for b in args.batches.split(",")]:
        model.encode(texts[:32], batch_size=batch, normalize_embeddings=True)
        times = []
        for _ in range(args.repeats):
            sync()
            t = time.perf_counter()
            vecs = model.encode(texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)
            sync()
            times.append(time.perf_counter() - t)
        out = {
            "engine": "sentence-transformers",
            "dtype": args.dtype,
            "device": args.device,
            "batch": batch,
            "texts": len(texts),
            "seconds": min(times),
            "all_seconds": times,
            "passages_per_second": len(texts) / min(times),
            "max_seq_length": model.max_seq_length,
        }
        v = vecs.astype(np.float32)
        for spec in args.ours:
            name, path = spec.split("=", 1)
            try:
                ours = np.fromfile(path, dtype=np.float32).reshape(len(texts), -1)
            except (OSError, ValueError) as e:  # that DataFactory run failed
                out[f"min_cosine_vs_datafactory_{name}"] = f"no vectors: {e}"
                continue
            cos = (ours * v).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(v, axis=1))
            out[f"min_cosine_vs_datafactory_{name}"] = float(cos.min())
            out[f"mean_cosine_vs_datafactory_{name}"] = float(cos.mean())
        print(json.dumps(out), flush=True)

    if args.queries:
        queries = json.load(open(args.queries))
        for q in queries[:10]:
            model.encode([q], normalize_embeddings=True)
        ms = []
        for q in queries:
            t = time.perf_counter()
            model.encode([q], normalize_embeddings=True, convert_to_numpy=True)
            ms.append((time.perf_counter() - t) * 1000)
        print(json.dumps({
            "engine": "sentence-transformers",
            "dtype": args.dtype,
            "device": args.device,
            "query_latency": {
                "queries": len(ms),
                "p50_ms": percentile(ms, 50),
                "p90_ms": percentile(ms, 90),
                "mean_ms": sum(ms) / len(ms),
            },
        }), flush=True)


if __name__ == "__main__":
    main()
