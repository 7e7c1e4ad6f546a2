#!/usr/bin/env python3
"""DataFactory's cross-encoder (candle) against sentence-transformers'
CrossEncoder (PyTorch) on the same weights and the same 1,000 real
query-passage pairs, in one run, CPU.

Model: no real reranker weights are on these machines, so the script writes
one of a realistic shape: all-MiniLM-L6-v2's BERT (6 layers, 384 wide) with a
seeded random one-logit classification head (BertForSequenceClassification),
into a temporary folder that both engines load. A random head makes the scores
meaningless as relevance, not as arithmetic: both engines compute the same
function, and their speed is what is compared.

Pairs: XQuAD (English) questions, each with its own paragraph and nine other
paragraphs of the same article set, as a reranker sees them (query, then 10
candidates). Paragraphs are 50-300 words; every pair fits 512 tokens, so the
two engines' truncation rules never differ.

Both sides: batch 32, the same thread count (default 2), f32; the figure is
pairs per second, as a ratio DataFactory / sentence-transformers, plus the
largest difference between the two engines' sigmoid scores. DataFactory also
runs with `rerank.dtype = "int8"` (linear layers in int8; AVX-512 VNNI where
the CPU has it). DataFactory sorts pairs by length before batching (as its
embedder does); CrossEncoder.predict batches them in the order given, so a
second sentence-transformers row feeds it the pairs pre-sorted by length:
the ratio against that row is the model code alone. Each engine runs
`--rounds` times, alternating, and its best round counts (the machines are
shared; alternating spreads other load over all engines).

    python3 bench/rerank.py [BASE_BERT_DIR] [--threads 2] [--n 1000] [--rounds 2] [--no-int8] [--keep DIR] [--binary PATH]

BASE_BERT_DIR defaults to ~/.cache/datafactory-test-models/all-MiniLM-L6-v2.
Needs sentence-transformers (pip; it brings torch and transformers) and builds
the release datafactory-bench.
"""
import argparse, json, os, random, subprocess, sys, tempfile, time

import numpy as np

from embed import cpu_model  # the CPU's model name, from /proc/cpuinfo


def pairs(data, n, per_query=10, seed=7):
    paragraphs = []
    for a in json.load(open(os.path.join(data, "xquad/xquad.en.json")))["data"]:
        for p in a["paragraphs"]:
            paragraphs.append((" ".join(p["context"].split()[:300]), [q["question"] for q in p["qas"]]))
    rng = random.Random(seed)
    out = []
    order = list(range(len(paragraphs)))
    rng.shuffle(order)
    for i in order:
        context, questions = paragraphs[i]
        query = questions[0]
        others = rng.sample([j for j in range(len(paragraphs)) if j != i], per_query - 1)
        candidates = [context] + [paragraphs[j][0] for j in others]
        rng.shuffle(candidates)
        out += [[query, c] for c in candidates]
        if len(out) >= n:
            return out[:n]
    sys.exit(f"only {len(out)} pairs")


def make_model(base, out, seed=20251127):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(base, num_labels=1)
    with torch.no_grad():
        # A head that spreads the scores (the default init gives logits near 0).
        model.classifier.weight.normal_(0.0, 0.5)
        model.classifier.bias.zero_()
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base", nargs="?",
                    default=os.path.expanduser("~/.cache/datafactory-test-models/all-MiniLM-L6-v2"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-int8", action="store_true", help="skip DataFactory's int8 run")
    ap.add_argument("--keep", help="write the benchmark model here (kept) instead of a temporary folder")
    ap.add_argument("--binary", help="a datafactory-bench already built (default: build the release one)")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = pairs(os.path.join(root, "tests", "data"), args.n)

    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    if args.binary:
        binary = args.binary
    else:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "datafactory-bench"], cwd=root, check=True)
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
        binary = os.path.join(target, "release", "datafactory-bench")

    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.keep or os.path.join(tmp, "minilm-cross-encoder")
        make_model(args.base, model_dir)
        ce = CrossEncoder(model_dir, device="cpu", max_length=512)
        lengths = [len(ce.tokenizer(q, p)["input_ids"]) for q, p in data]
        assert max(lengths) <= 512, max(lengths)
        ce.predict(data[:32], batch_size=args.batch)
        by_length = sorted(range(len(data)), key=lambda i: -lengths[i])

        def st_given():
            return ce.predict(data, batch_size=args.batch, convert_to_numpy=True)

        def st_sorted():
            out = ce.predict([data[i] for i in by_length], batch_size=args.batch, convert_to_numpy=True)
            scores = np.empty(len(data), dtype=np.float32)
            scores[by_length] = out
            return scores

        path = os.path.join(tmp, "pairs.json")
        json.dump(data, open(path, "w"))
        dtypes = ["f32"] + ([] if args.no_int8 else ["int8"])
        best, scores = {}, {}
        for _ in range(args.rounds):
            for name, run in [("st", st_given), ("st-sorted", st_sorted)]:
                t = time.perf_counter()
                scores[name] = np.asarray(run(), dtype=np.float64)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
            for dtype in dtypes:
                out = subprocess.run([binary, "rerank", model_dir, path, str(args.batch), dtype],
                                     check=True, capture_output=True, text=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                best[dtype] = min(best.get(dtype, float("inf")), row["seconds"])
                logits = np.fromfile(f"{path}.{dtype}.scores.f32", dtype=np.float32).astype(np.float64)
                scores[dtype] = 1.0 / (1.0 + np.exp(-logits))

    rate = {k: len(data) / v for k, v in best.items()}
    print(f"{len(data)} query-passage pairs (XQuAD en, {min(lengths)}-{max(lengths)} tokens, "
          f"mean {np.mean(lengths):.0f}), batch {args.batch}, {args.threads} threads, CPU: {cpu_model}, best of "
          f"{args.rounds} rounds; all-MiniLM-L6-v2 + random one-logit head\n")
    print("| engine | pairs/s | seconds | ratio | ratio vs pre-sorted |")
    print("|---|---|---|---|---|")
    rows = [("st", f"sentence-transformers CrossEncoder f32 (torch {torch.__version__})"),
            ("st-sorted", "sentence-transformers CrossEncoder f32, pairs pre-sorted by length")]
    rows += [(d, f"DataFactory (candle) {d}") for d in dtypes]
    for key, label in rows:
        print(f"| {label} | {rate[key]:.1f} | {best[key]:.1f} | {rate[key] / rate['st']:.2f} | "
              f"{rate[key] / rate['st-sorted']:.2f} |")
    print(f"\nlargest |sigmoid score difference| DataFactory f32 vs sentence-transformers: "
          f"{np.abs(scores['f32'] - scores['st']).max():.2e}")
    if "int8" in scores:
        print(f"largest |sigmoid score difference| DataFactory int8 vs f32: "
              f"{np.abs(scores['int8'] - scores['f32']).max():.2e}")
    # The ranking each engine gives each query's 10 candidates.
    queries = len(data) // 10
    for key in dtypes:
        same = sum(int(np.array_equal(np.argsort(-scores["st"][q:q + 10]), np.argsort(-scores[key][q:q + 10])))
                   for q in range(0, queries * 10, 10))
        top1 = sum(int(np.argmax(scores["st"][q:q + 10]) == np.argmax(scores[key][q:q + 10]))
                   for q in range(0, queries * 10, 10))
        print(f"queries ranked identically, DataFactory {key} vs sentence-transformers: {same}/{queries} "
              f"(same best candidate: {top1}/{queries})")


if __name__ == "__main__":
    sys.exit(main())
