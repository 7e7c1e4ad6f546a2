#!/usr/bin/env python3
"""Writes a random-weight model of bge-m3's shape for the GPU check.

bge-m3 cannot be downloaded here, and the speed of an encoder does not depend
on its weights, only on its shape: this writes an XLM-RoBERTa with bge-m3's
configuration (24 layers, hidden 1024, 16 heads, FFN 4096, vocabulary 250,002,
8,194 positions), random weights in f16 (safetensors), a Unigram tokenizer
with XLM-R's special tokens trained on the benchmark passages (so passages
cut into about as many tokens as bge-m3's tokenizer makes of them), and
a random sparse head (sparse_linear.pt), and
bge-m3's sentence-transformers files (CLS pooling, then normalisation), so
that DataFactory and sentence-transformers load the same directory.

With --classifier it writes bge-reranker-v2-m3's shape instead (the same
encoder under `roberta.` with a one-logit classification head,
XLMRobertaForSequenceClassification), which the reranker and
sentence-transformers' CrossEncoder load.

    python3 make_model.py OUT_DIR PASSAGES.json [--classifier] [--layers 24]
"""
import argparse, json, os

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaModel

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def tokenizer(texts, path):
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=16000, special_tokens=SPECIALS, unk_token="<unk>")
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok.save(path)
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("passages")
    ap.add_argument("--classifier", action="store_true")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--ffn", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=250002)
    args = ap.parse_args()
    os.makedirs(os.path.join(args.out, "1_Pooling"), exist_ok=True)
    texts = json.load(open(args.passages))
    texts = [t if isinstance(t, str) else " ".join(t) for t in texts]
    tok = tokenizer(texts, os.path.join(args.out, "tokenizer.json"))
    assert tok.token_to_id("<pad>") == 1 and tok.token_to_id("</s>") == 2
    config = XLMRobertaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.ffn,
        max_position_embeddings=8194,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=1,
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        if args.classifier:
            model = XLMRobertaForSequenceClassification(config)
        else:
            model = XLMRobertaModel(config, add_pooling_layer=False)
    model.half().save_pretrained(args.out, safe_serialization=True)
    # bge-m3's sparse head: one linear layer hidden -> 1 (sparse_linear.pt).
    head = torch.nn.Linear(args.hidden, 1)
    torch.save({k: v.detach().cpu() for k, v in head.state_dict().items()}, os.path.join(args.out, "sparse_linear.pt"))
    json.dump(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 8192,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
            "cls_token": "<s>", "pad_token": "<pad>", "mask_token": "<mask>",
        },
        open(os.path.join(args.out, "tokenizer_config.json"), "w"),
    )
    json.dump({"max_seq_length": 512, "do_lower_case": False}, open(os.path.join(args.out, "sentence_bert_config.json"), "w"))
    json.dump(
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        open(os.path.join(args.out, "modules.json"), "w"),
    )
    json.dump(
        {"word_embedding_dimension": args.hidden, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
        open(os.path.join(args.out, "1_Pooling", "config.json"), "w"),
    )
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"model": args.out, "parameters": n, "vocabulary_trained": tok.get_vocab_size()}))


if __name__ == "__main__":
    main()
