"""sentence-transformers' CPU throughput on the passages the Rust example
`embed_speed` wrote (DATAFACTORY_SPEED_TEXTS=FILE), for a same-machine comparison.

    python crates/models/tests/parity/speed_st.py MODEL_DIR FILE [THREADS]
"""

import sys
import time

import torch
from sentence_transformers import SentenceTransformer


def main() -> None:
    model_dir, path = sys.argv[1], sys.argv[2]
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
    texts = [line.rstrip("\n") for line in open(path, encoding="utf-8") if line.strip()]
    model = SentenceTransformer(model_dir, device="cpu")
    model.encode(texts, batch_size=32)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        model.encode(texts, batch_size=32)
        best = min(best, time.perf_counter() - start)
    print(f"{len(texts)} passages: best {best:.3f} s, {len(texts) / best:.1f} passages/s")


if __name__ == "__main__":
    main()
