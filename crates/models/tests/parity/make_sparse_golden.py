"""A tiny random XLM-RoBERTa with a bge-m3-style sparse head, and its reference outputs.

Writes a complete model directory (config.json, model.safetensors,
tokenizer.json, sparse_linear.pt; no modules.json, so CLS pooling as for
bge-m3) plus golden.json: for each text, the L2-normalised CLS vector and the
sparse weights computed the way FlagEmbedding's BGE-M3 does
(relu(sparse_linear(last_hidden_state)), max per token id, special tokens and
zero weights dropped). The encoder is transformers' own XLMRobertaModel, so the
Rust test checks our encoder (positions from padding_idx + 1, one token type)
against the reference implementation as well as the sparse head.

Usage (torch, transformers and tokenizers installed):

    python crates/models/tests/parity/make_sparse_golden.py crates/models/tests/fixtures/tiny-xlmr-sparse
"""

import json
import os
import sys

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import XLMRobertaConfig, XLMRobertaModel

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
WORDS = (
    "the a an of to and in is it that for on with as by at from this be are was "
    "search vector sparse dense token model query passage document chunk index "
    "embed text word weight cat dog run fast slow big small red blue"
).split()
TEXTS = [
    "the cat is on the mat",
    "sparse weights for a query",
    "dense vector search and sparse search",
    "the the the dog dog",
    "zzz unknown qqq letters",
    "a big red dog runs fast and a small blue cat runs slow in the index",
    "",
    "model",
]


def build_tokenizer() -> Tokenizer:
    vocab = [(t, 0.0) for t in SPECIALS]
    vocab += [("\u2581" + w, -2.0 - 0.01 * i) for i, w in enumerate(WORDS)]
    vocab += [("\u2581", -8.0)]
    vocab += [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok.add_special_tokens(SPECIALS)
    return tok


def main() -> None:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(20240131)
    tok = build_tokenizer()
    tok.save(os.path.join(out, "tokenizer.json"))

    config = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=34,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
    )
    model = XLMRobertaModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)

    sparse_linear = torch.nn.Linear(32, 1)
    with torch.no_grad():
        sparse_linear.weight.copy_(0.3 * torch.randn_like(sparse_linear.weight))
    encodings = tok.encode_batch(TEXTS)
    longest = max(len(e.ids) for e in encodings)
    ids = torch.full((len(TEXTS), longest), 1, dtype=torch.long)
    mask = torch.zeros((len(TEXTS), longest), dtype=torch.long)
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        dense = torch.nn.functional.normalize(hidden[:, 0], dim=-1)
        # A random head is positive on all tokens or on none; centre it so that
        # about half of the real tokens get a weight, with the threshold in the
        # widest gap near the median so that no token sits at exactly zero.
        raw = (hidden @ sparse_linear.weight.T).squeeze(-1)[mask == 1].sort().values
        n = raw.numel()
        k = max(range(n // 4, 3 * n // 4), key=lambda i: float(raw[i + 1] - raw[i]))
        sparse_linear.bias.fill_(-float(raw[k] + raw[k + 1]) / 2)
        print(f"smallest distance of a token from the relu threshold: {float(raw[k + 1] - raw[k]) / 2:.6f}")
        weights = torch.relu(sparse_linear(hidden)).squeeze(-1)

    torch.save(sparse_linear.state_dict(), os.path.join(out, "sparse_linear.pt"))

    special_ids = {tok.token_to_id(t) for t in SPECIALS}
    texts = []
    for i, (text, e) in enumerate(zip(TEXTS, encodings)):
        best = {}
        for pos, token_id in enumerate(e.ids):
            w = float(weights[i, pos])
            if token_id in special_ids or w <= 0:
                continue
            best[token_id] = max(best.get(token_id, 0.0), w)
        texts.append(
            {
                "text": text,
                "ids": e.ids,
                "dense": [round(float(x), 6) for x in dense[i]],
                "sparse": [[k, round(v, 6)] for k, v in sorted(best.items())],
            }
        )
    with open(os.path.join(out, "golden.json"), "w", encoding="utf-8") as f:
        json.dump({"texts": texts}, f, indent=1)
        f.write("\n")
    print(f"wrote the model and {len(texts)} reference outputs to {out}")


if __name__ == "__main__":
    main()
