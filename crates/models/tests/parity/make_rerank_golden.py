"""Tiny random cross-encoders (XLM-RoBERTa and BERT sequence classifiers with
one label) and their reference logits.

Writes two complete model directories, `tiny-xlmr-reranker` and
`tiny-bert-reranker` (config.json, model.safetensors, tokenizer.json), each with
golden.json: for each query-passage pair, the token ids and the raw logit that
transformers' own XLMRobertaForSequenceClassification /
BertForSequenceClassification computes in one padded batch. Pairs are
tokenized the way FlagEmbedding's reranker does for bge-reranker-v2-m3: the
query alone truncated to query_max_length (3/4 of max_length), the passage to
max_length, then only the passage cut so that the pair with its special
tokens fits max_length. The pair template is written out here by hand (XLM-R:
<s> q </s></s> p </s>; BERT: [CLS] q [SEP] p [SEP] with type ids 0/1), so the
Rust side's use of the tokenizer's template is checked too.

The position tables are small (32 and 40 tokens), so max_length is the
model's limit and truncation of both queries and passages is exercised.

Usage (torch, transformers and tokenizers installed):

    python crates/models/tests/parity/make_rerank_golden.py crates/models/tests/fixtures
"""

import json
import os
import sys

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification, XLMRobertaConfig, XLMRobertaForSequenceClassification

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_sparse_golden import WORDS, build_tokenizer as build_xlmr_tokenizer  # noqa: E402

PAIRS = [
    ("what is a cat", "the cat is on the mat"),
    ("what is a cat", "a big red dog runs fast"),
    ("what is a cat", ""),
    ("dense vector search", "sparse weights for a query and a dense vector index of the document"),
    (
        "a very long query about the search of a dense vector in an index of text chunks with words",
        "the passage",
    ),
    (
        "search",
        "a big red dog runs fast and a small blue cat runs slow in the index of the model and the "
        "document chunk text word weight is in the passage of the query " * 2,
    ),
    ("zzz qqq", "unknown letters xyz"),
    ("", "model"),
]


def bert_tokenizer() -> Tokenizer:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {}
    for t in specials + WORDS + list("abcdefghijklmnopqrstuvwxyz") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]:
        vocab.setdefault(t, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tok.add_special_tokens(specials)
    return tok


def randomize(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))


def pair_ids(tok, query, passage, max_length, query_max_length, cls, sep, double_sep):
    """FlagEmbedding's truncation, with the pair template written out."""
    q = tok.encode(query, add_special_tokens=False).ids[:query_max_length]
    p = tok.encode(passage, add_special_tokens=False).ids[:max_length]
    specials = 4 if double_sep else 3
    p = p[: max_length - specials - len(q)]
    if double_sep:
        ids = [cls] + q + [sep, sep] + p + [sep]
        types = [0] * len(ids)
    else:
        ids = [cls] + q + [sep] + p + [sep]
        types = [0] * (len(q) + 2) + [1] * (len(p) + 1)
    return ids, types


def write(out, tok, model, max_length, cls, sep, pad, double_sep):
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    model.save_pretrained(out, safe_serialization=True)
    query_max_length = max_length * 3 // 4
    encoded = [pair_ids(tok, q, p, max_length, query_max_length, cls, sep, double_sep) for q, p in PAIRS]
    longest = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(PAIRS), longest), pad, dtype=torch.long)
    types = torch.zeros((len(PAIRS), longest), dtype=torch.long)
    mask = torch.zeros((len(PAIRS), longest), dtype=torch.long)
    for i, (e, t) in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e)
        types[i, : len(t)] = torch.tensor(t)
        mask[i, : len(e)] = 1
    kwargs = {} if double_sep else {"token_type_ids": types}
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits.squeeze(-1)
    pairs = [
        {"query": q, "passage": p, "ids": e, "type_ids": t, "logit": round(float(logits[i]), 6)}
        for i, ((q, p), (e, t)) in enumerate(zip(PAIRS, encoded))
    ]
    with open(os.path.join(out, "golden.json"), "w", encoding="utf-8") as f:
        json.dump({"max_length": max_length, "query_max_length": query_max_length, "pairs": pairs}, f, indent=1)
        f.write("\n")
    print(f"wrote {out}: logits {[p['logit'] for p in pairs]}")


def main() -> None:
    root = sys.argv[1]
    torch.manual_seed(20250611)

    tok = build_xlmr_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=34,  # 32 tokens + pad_token_id + 1
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        num_labels=1,
    )
    model = XLMRobertaForSequenceClassification(config).eval()
    randomize(model)
    write(os.path.join(root, "tiny-xlmr-reranker"), tok, model, 32, cls=0, sep=2, pad=1, double_sep=True)

    tok = bert_tokenizer()
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=2,
        pad_token_id=0,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
        num_labels=1,
    )
    model = BertForSequenceClassification(config).eval()
    randomize(model)
    write(os.path.join(root, "tiny-bert-reranker"), tok, model, 40, cls=2, sep=3, pad=0, double_sep=False)


if __name__ == "__main__":
    main()
