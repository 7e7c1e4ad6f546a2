#!/usr/bin/env python3
"""Renders `datafactory eval --json` reports as the Markdown rows of docs/QUALITY.md.

    scripts/eval-table.py [--label TEXT] REPORT.json [REPORT.json ...]

One row per mode (and per fusion of the hybrid mode): run, mode, Pass@k for
each k, Recall@k (sets judged by chunk), MRR@10, nDCG@10, p50 and p95 ms.
The run is --label, else the report's file name. Standard library only.
"""
import argparse
import json
import os
import sys


def rows(report, label):
    chunk_level = report["dataset"]["relevance"] == "chunk"
    ks = report["k"]
    out = []
    for m in report["modes"]:
        mode = m["mode"] + (f" ({m['fusion']})" if m.get("fusion") else "")
        cells = [label, mode]
        cells += [f"{100 * m['pass'][str(k)]:.1f}" for k in ks]
        if chunk_level:
            cells += [f"{100 * m['recall'][str(k)]:.1f}" for k in ks]
        cells += [f"{m['mrr_at_10']:.3f}", f"{m['ndcg_at_10']:.3f}"]
        cells += [f"{m['latency_ms']['p50']:.2f}", f"{m['latency_ms']['p95']:.2f}"]
        out.append("| " + " | ".join(cells) + " |")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", help="the run column (default: the file name)")
    p.add_argument("reports", nargs="+")
    a = p.parse_args()
    for path in a.reports:
        try:
            with open(path, encoding="utf-8") as f:
                report = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit(f"{path}: not a readable eval report: {e}")
        label = a.label or os.path.splitext(os.path.basename(path))[0]
        print("\n".join(rows(report, label)))


if __name__ == "__main__":
    main()
