#!/usr/bin/env python3
"""Writes a tiny llama-architecture GGUF with random weights, for tests that
need a real LLM server (llama.cpp's llama-server) but no real model.

2 layers, hidden 64, 4 heads / 2 KV heads, FFN 128, a SentencePiece-style
vocabulary: the special tokens, all 256 byte tokens (so any text can be
tokenized) and ~100 common words; a ChatML chat template. Weights are
random (seeded), so answers are gibberish: tests force full-length answers
with `logit_bias` against the end tokens (ids printed with --print-eog).

Usage: make_tiny_llama_gguf.py OUT.gguf   (needs `pip install gguf==0.19.0`)
"""
import sys

import numpy as np
import gguf

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CTX = 64, 2, 4, 2, 128, 32768
WORDS = """the of and to in a is that for it as was with be by on not he this are or his from
at which but have an they you were her she there been one all we their has would when if so no
will more can about what other into some could them than then only its also time these may like
document chunk section context search retrieval model server data text page file table figure
answer question first second new used use over after most through where between each under""".split()

SPECIAL = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
EOG_IDS = [2, 4]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def main() -> None:
    if sys.argv[1:] == ["--print-eog"]:
        print(",".join(map(str, EOG_IDS)))
        return
    out = sys.argv[1]
    rng = np.random.default_rng(20260601)
    tokens, scores, types = [], [], []
    for t in SPECIAL:
        tokens.append(t)
        scores.append(0.0)
        types.append(gguf.TokenType.UNKNOWN if t == "<unk>" else gguf.TokenType.CONTROL)
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(gguf.TokenType.BYTE)
    seen = set()
    for i, w in enumerate(WORDS):
        piece = "\u2581" + w
        if piece in seen:
            continue
        seen.add(piece)
        tokens.append(piece)
        scores.append(-float(i + 1))
        types.append(gguf.TokenType.NORMAL)
    vocab = len(tokens)

    w = gguf.GGUFWriter(out, "llama")
    w.add_name("datafactory-tiny-random-llama")
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHATML)

    def t(name, *shape, scale=0.08):
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    head_dim = HIDDEN // HEADS
    t("token_embd.weight", vocab, HIDDEN)
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    t("output.weight", vocab, HIDDEN)
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        t(f"blk.{i}.attn_q.weight", HEADS * head_dim, HIDDEN)
        t(f"blk.{i}.attn_k.weight", KV_HEADS * head_dim, HIDDEN)
        t(f"blk.{i}.attn_v.weight", KV_HEADS * head_dim, HIDDEN)
        t(f"blk.{i}.attn_output.weight", HIDDEN, HEADS * head_dim)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        t(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        t(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        t(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
