#!/usr/bin/env python3
"""DataFactory's in-process embedder (candle) against sentence-transformers
(PyTorch) on the same model and the same 1,000 real passages, in one run, CPU.

Passages: 150-250 words each, from the evaluation data in tests/data (Cranfield
abstracts, XQuAD paragraphs in English and German, Anthropic documentation
sections), cut at 250 words. Both sides: batch 32, the same thread count
(default 2), f32; the figure is passages per second, as a ratio
DataFactory / sentence-transformers, plus the lowest cosine between the two
engines' vectors for the same passage. DataFactory also runs with
`embedding.dtype = "int8"` (linear layers in int8; AVX-512 VNNI where the CPU
has it), compared by speed with sentence-transformers and by cosine with
both engines' f32 vectors. With `--repeats N` every engine runs N times, the
engines taking turns, and the median rate is the figure (each run is listed).

    python3 bench/embed.py MODEL_DIR [--threads 2] [--n 1000] [--repeats 1] [--no-int8]

Needs sentence-transformers (pip; it brings torch) and builds
target/release/datafactory-bench.
"""
import argparse, json, os, re, subprocess, sys, tempfile, time

import numpy as np


def passages(data, n):
    texts = []
    cran = open(os.path.join(data, "cranfield/cran.all.1400"), encoding="utf-8", errors="replace").read()
    for doc in re.split(r"^\.I ", cran, flags=re.M)[1:]:
        m = re.search(r"^\.W\n(.*)", doc, flags=re.S | re.M)
        if m:
            texts.append(" ".join(m.group(1).split()))
    for lang in ("en", "de"):
        for a in json.load(open(os.path.join(data, f"xquad/xquad.{lang}.json")))["data"]:
            texts += [" ".join(p["context"].split()) for p in a["paragraphs"]]
    for d in json.load(open(os.path.join(data, "anthropic_docs_rag/anthropic_docs.json"))):
        body = d.get("text") or d.get("content") or ""
        words = body.split()
        for s in range(0, len(words), 250):
            texts.append(" ".join(words[s : s + 250]))
    chosen = []
    for t in texts:
        w = t.split()
        if len(w) >= 150:
            chosen.append(" ".join(w[:250]))
    if len(chosen) < n:
        sys.exit(f"only {len(chosen)} passages of 150-250 words")
    return chosen[:n]


# The CPU features the kernels choose by (crates/models/src/kernels.rs).
WATCHED_FLAGS = ["avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"]


def cpu_info():
    """The CPU's model name and flags, from /proc/cpuinfo (Linux)."""
    model, flags = "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


cpu_model, cpu_flags = cpu_info()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--no-int8", action="store_true", help="skip DataFactory's int8 runs")
    ap.add_argument("--repeats", type=int, default=1, help="runs of every engine, in turn (median reported)")
    ap.add_argument("--no-bf16", action="store_true", help="skip DataFactory's bf16 run (CPUs with AMX-BF16)")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    texts = passages(os.path.join(root, "tests", "data"), args.n)

    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "datafactory-bench"], cwd=root, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    binary = os.path.join(target, "release", "datafactory-bench")

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    st = SentenceTransformer(args.model, device="cpu")
    st.encode(texts[:32], batch_size=32)

    runs = [("f32", "f32", {})]
    if not args.no_int8:
        runs.append(("int8", "int8", {}))
        if "amx_int8" in cpu_flags:
            # The same int8 run with the AMX kernel off: AVX-512 VNNI.
            runs.append(("int8, AMX off (VNNI)", "int8", {"DATAFACTORY_CPU_AMX": "0"}))
    if "amx_bf16" in cpu_flags and not args.no_bf16:
        # Linear layers in bf16 on AMX tiles (elsewhere candle's bf16, slow on CPUs).
        runs.append(("bf16 (AMX)", "bf16", {}))
    # Rates per engine, one per repeat; the engines take turns within each
    # repeat, so a slow spell of a shared machine falls on all of them.
    rates = {"st": [], **{name: [] for name, _, _ in runs}}
    vectors = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "texts.json")
        json.dump(texts, open(path, "w"))
        for _ in range(args.repeats):
            t = time.perf_counter()
            theirs = st.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
            rates["st"].append(len(texts) / (time.perf_counter() - t))
            for name, dtype, env in runs:
                out = subprocess.run([binary, "embed", args.model, path, "32", dtype],
                                     check=True, capture_output=True, text=True, env={**os.environ, **env})
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rates[name].append(row["passages_per_second"])
                vectors[name] = np.fromfile(f"{path}.{dtype}.vectors.f32", dtype=np.float32).reshape(len(texts), -1)

    def cosine(a, b):
        return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    st_rate = float(np.median(rates["st"]))
    each = lambda r: ", ".join(f"{x:.1f}" for x in r)
    print(f"{len(texts)} passages of 150-250 words, batch 32, {args.threads} threads, CPU: {cpu_model}")
    print(f"CPU features: {' '.join(f for f in WATCHED_FLAGS if f in cpu_flags) or 'none of ' + ' '.join(WATCHED_FLAGS)}")
    print(f"{args.repeats} repeat(s), engines in turn; passages/s is the median\n")
    print("| engine | passages/s | each repeat | ratio |")
    print("|---|---|---|---|")
    print(f"| sentence-transformers f32 (torch {torch.__version__}) | {st_rate:.1f} | {each(rates['st'])} | 1.00 |")
    for name, _, _ in runs:
        rate = float(np.median(rates[name]))
        print(f"| DataFactory (candle) {name} | {rate:.1f} | {each(rates[name])} | {rate / st_rate:.2f} |")
    cos = cosine(vectors["f32"], theirs)
    print(f"\ncosine DataFactory f32 vs sentence-transformers: min {cos.min():.6f}, mean {cos.mean():.6f}")
    for run in [r for r in vectors if r != "f32"]:
        for name, ref in [("DataFactory f32", vectors["f32"]), ("sentence-transformers", theirs)]:
            cos = cosine(vectors[run], ref)
            print(f"cosine DataFactory {run} vs {name}: min {cos.min():.6f}, mean {cos.mean():.6f}")


if __name__ == "__main__":
    sys.exit(main())
