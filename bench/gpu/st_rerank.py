#!/usr/bin/env python3
"""sentence-transformers' CrossEncoder (PyTorch) side of the GPU check: the
same classifier directory and [query, passage] pairs as `datafactory-bench
rerank`, on cuda:0 in DTYPE, batch 32; warm-up on 32 pairs, then REPEATS
timed runs over all (pairs pre-sorted by length, as DataFactory batches
them, so the ratio is the model code). Prints one JSON line, with the largest
difference of sigmoid scores against DataFactory's raw scores when given.

    python3 st_rerank.py MODEL_DIR PAIRS.json [--ours SCORES.f32] [--repeats 3] [--dtype f16]
"""
import argparse, json, time

import numpy as np
import torch
from sentence_transformers import CrossEncoder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("pairs")
    ap.add_argument("--ours")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="f16", choices=["f16", "bf16", "f32"])
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    pairs = [tuple(p) for p in json.load(open(args.pairs))]
    model = CrossEncoder(args.model, device=args.device, max_length=512, model_kwargs={"dtype": dtype})
    order = sorted(range(len(pairs)), key=lambda i: -len(model.tokenizer(*pairs[i])["input_ids"]))
    ordered = [pairs[i] for i in order]
    model.predict(ordered[:32], batch_size=32)
    times = []
    for _ in range(args.repeats):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        scores = model.predict(ordered, batch_size=32, convert_to_numpy=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    out = {
        "engine": "sentence-transformers CrossEncoder",
        "dtype": args.dtype,
        "device": args.device,
        "pairs": len(pairs),
        "seconds": min(times),
        "all_seconds": times,
        "pairs_per_second": len(pairs) / min(times),
    }
    if args.ours:
        ours = np.fromfile(args.ours, dtype=np.float32)
        theirs = np.empty(len(pairs), dtype=np.float32)
        theirs[order] = np.asarray(scores, dtype=np.float32).reshape(-1)
        out["max_abs_sigmoid_diff_vs_datafactory"] = float(np.abs(1 / (1 + np.exp(-ours)) - theirs).max())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
