#!/usr/bin/env python3
"""sentence-transformers' CrossEncoder (PyTorch) side of the GPU check: the
same classifier directory and [query, passage] pairs as `datafactory-bench
rerank`, on cuda:0 in DTYPE; warm-up on 32 pairs, then REPEATS timed runs
over all, for each batch size of --batches (one JSON line each; pairs
pre-sorted by length, as DataFactory batches them, so the ratio is the model
code). With --ours (DataFactory's raw scores, NAME=FILE.f32, repeatable) each
line gives the largest difference of sigmoid scores against each.

    python3 st_rerank.py MODEL_DIR PAIRS.json [--batches 32,128] [--repeats 3] [--dtype f16]
        [--ours fused=SCORES.f32 ...]
"""
import argparse, json, time

import numpy as np
import torch
from sentence_transformers import CrossEncoder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("pairs")
    ap.add_argument("--ours", action="append", default=[], help="NAME=FILE.f32 (repeatable)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="32")
    ap.add_argument("--dtype", default="f16", choices=["f16", "bf16", "f32"])
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    pairs = [tuple(p) for p in json.load(open(args.pairs))]
    model = CrossEncoder(args.model, device=args.device, max_length=512, model_kwargs={"dtype": dtype})
    order = sorted(range(len(pairs)), key=lambda i: -len(model.tokenizer(*pairs[i])["input_ids"]))
    ordered = [pairs[i] for i in order]
    for batch in [int(b) for b in args.batches.split(",")]:
        model.predict(ordered[:32], batch_size=batch)
        times = []
        for _ in range(args.repeats):
            if args.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            scores = model.predict(ordered, batch_size=batch, convert_to_numpy=True)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out = {
            "engine": "sentence-transformers CrossEncoder",
            "dtype": args.dtype,
            "device": args.device,
            "batch": batch,
            "pairs": len(pairs),
            "seconds": min(times),
            "all_seconds": times,
            "pairs_per_second": len(pairs) / min(times),
        }
        theirs = np.empty(len(pairs), dtype=np.float32)
        theirs[order] = np.asarray(scores, dtype=np.float32).reshape(-1)
        for spec in args.ours:
            name, path = spec.split("=", 1)
            try:
                ours = np.fromfile(path, dtype=np.float32)
                diff = np.abs(1 / (1 + np.exp(-ours)) - theirs).max()
            except (OSError, ValueError) as e:  # that DataFactory run failed
                out[f"max_abs_sigmoid_diff_vs_datafactory_{name}"] = f"no scores: {e}"
                continue
            out[f"max_abs_sigmoid_diff_vs_datafactory_{name}"] = float(diff)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
