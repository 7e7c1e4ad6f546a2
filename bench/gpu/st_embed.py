#!/usr/bin/env python3
"""sentence-transformers (PyTorch) side of the GPU check: the same model
directory and passages as `datafactory-bench embed`, fp16 on cuda:0, batch
32, normalised; warm-up on 32 passages, then REPEATS timed runs over all.
Prints one JSON line, with the lowest cosine against DataFactory's vectors
when their file is given.

    python3 st_embed.py MODEL_DIR PASSAGES.json [--ours VECTORS.f32] [--repeats 3] [--dtype f16]
"""
import argparse, json, time

import numpy as np
import torch
from sentence_transformers import SentenceTransformer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("passages")
    ap.add_argument("--ours")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="f16", choices=["f16", "bf16", "f32"])
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    texts = json.load(open(args.passages))
    model = SentenceTransformer(args.model, device=args.device, model_kwargs={"dtype": dtype})
    model.encode(texts[:32], batch_size=32, normalize_embeddings=True)
    times = []
    for _ in range(args.repeats):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        vecs = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    out = {
        "engine": "sentence-transformers",
        "dtype": args.dtype,
        "device": args.device,
        "texts": len(texts),
        "seconds": min(times),
        "all_seconds": times,
        "passages_per_second": len(texts) / min(times),
        "max_seq_length": model.max_seq_length,
    }
    if args.ours:
        ours = np.fromfile(args.ours, dtype=np.float32).reshape(len(texts), -1)
        v = vecs.astype(np.float32)
        cos = (ours * v).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(v, axis=1))
        out["min_cosine_vs_datafactory"] = float(cos.min())
        out["mean_cosine_vs_datafactory"] = float(cos.mean())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
