#!/usr/bin/env python3
"""Prints the GPU check's figures (bench/gpu/check.sh's summary.jsonl) as
a compact table: tests, embedder and reranker throughput with our fused
kernels on and off beside sentence-transformers, agreement, single-query
latency, skipped steps.

    python3 summary.py summary.jsonl
"""
import json, sys


def rows(path):
    out = []
    for line in open(path, errors="replace"):
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def fused_state(r):
    f = r.get("fused_kernels") or {}
    if f.get("switch") == "0":
        return "candle"
    return "fused" if f.get("active") else "fused-not-loaded"


def fmt(x, spec="{:,.0f}"):
    return "-" if x is None else spec.format(x)


def main():
    rs = rows(sys.argv[1])
    lines = []
    for r in rs:
        if "tests_failed" in r:
            lines.append(f"tests: {len(r['tests_passed'])} passed, {len(r['tests_failed'])} failed {r['tests_failed'] or ''}")
        if "torch" in r:
            lines.append(f"torch {r['torch']}, sentence-transformers {r['sentence_transformers']}")
    for kind, unit, st_engine in (("passages_per_second", "passages/s", "sentence-transformers"),
                                  ("pairs_per_second", "pairs/s", "sentence-transformers CrossEncoder")):
        table = {}
        agree = {}
        for r in rs:
            if kind not in r:
                continue
            key = (r.get("dtype"), r.get("batch"))
            if r.get("engine") == "datafactory/candle":
                table.setdefault(key, {})[fused_state(r)] = r[kind]
            elif r.get("engine") == st_engine:
                table.setdefault(key, {})["st"] = r[kind]
                agree[key] = {k: v for k, v in r.items() if "vs_datafactory" in k}
        if not table:
            continue
        lines.append("")
        lines.append(f"{'embedder' if unit == 'passages/s' else 'reranker'} ({unit}): dtype batch | ours fused | ours candle ops | PyTorch | fused/PyTorch | candle/PyTorch")
        for (dtype, batch), t in sorted(table.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0)):
            st, fu, ca = t.get("st"), t.get("fused", t.get("fused-not-loaded")), t.get("candle")
            ratio = lambda a: f"{a / st:.2f}x" if a and st else "-"
            note = " (FUSED KERNELS NOT LOADED)" if "fused-not-loaded" in t else ""
            lines.append(f"  {dtype} {batch}: {fmt(fu)} | {fmt(ca)} | {fmt(st)} | {ratio(fu)} | {ratio(ca)}{note}")
            if agree.get((dtype, batch)):
                lines.append("      agreement: " + ", ".join(
                    f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in agree[(dtype, batch)].items()))
    lat = []
    for r in rs:
        q = r.get("query_latency")
        if q:
            who = "ours " + fused_state(r) if r.get("engine") == "datafactory/candle" else "PyTorch"
            lat.append(f"  {who} {r.get('dtype')}: p50 {q['p50_ms']:.2f} ms, p90 {q['p90_ms']:.2f} ms over {q['queries']} queries")
    if lat:
        lines += ["", "single-query latency (embedder):"] + lat
    for r in rs:
        if "launcher_exit_code" in r:
            lines.append(f"launcher.sh exit code {r['launcher_exit_code']}")
        if "search_results" in r:
            lines.append(f"ingest + hybrid search on the GPU: {r['search_results']} results")
        if "skipped" in r:
            lines.append(f"SKIPPED (time budget): {r['skipped']} at {r['at_seconds']} s")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
