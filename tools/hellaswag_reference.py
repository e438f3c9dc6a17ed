#!/usr/bin/env python3
"""HellaSwag scores of a Hugging Face GPT-2, computed by transformers, for tests/hellaswag.rs.

    python tools/hellaswag_reference.py --model-dir DIR --examples FILE.jsonl --out EXPECTED.json

DIR is a folder that transformers loads (config.json, model.safetensors, vocab.json, merges.txt:
what `train-gpt2-cuda convert --format hf` writes). Each example is rendered as llm.c's
dev/data/hellaswag.py renders it (the context's tokens, then " " + ending's, one row per ending),
the rows go through GPT2LMHeadModel in float64, and each ending's tokens' cross-entropies are
summed and averaged. Writes, per example, the rows' token ids, the context's length, the sums,
counts and averages, the predictions by sum (acc) and by average (acc_norm), and the margin of
the acc_norm prediction (the second-lowest average minus the lowest); then the totals.
"""
import argparse
import json

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, GPT2LMHeadModel


def render(tok, example):
    ctx = tok.encode(example["ctx"])
    rows = [ctx + tok.encode(" " + ending) for ending in example["endings"]]
    return ctx, rows


def score(model, ctx, rows):
    sums, counts = [], []
    for row in rows:
        ids = torch.tensor([row])
        with torch.no_grad():
            logits = model(ids).logits[0]  # (T, V)
        losses = F.cross_entropy(logits[:-1], ids[0, 1:], reduction="none")  # (T - 1,)
        ending = losses[len(ctx) - 1:]  # the positions that predict the ending's tokens
        sums.append(float(ending.sum()))
        counts.append(int(ending.numel()))
    avgs = [s / n for s, n in zip(sums, counts)]
    return sums, counts, avgs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--examples", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = GPT2LMHeadModel.from_pretrained(args.model_dir).to(torch.float64).eval()
    out, right_norm, right_sum = [], 0, 0
    for line in open(args.examples, encoding="utf-8"):
        if not line.strip():
            continue
        example = json.loads(line)
        label = int(example["label"])
        ctx, rows = render(tok, example)
        sums, counts, avgs = score(model, ctx, rows)
        pred_sum = min(range(4), key=lambda i: (sums[i], i))
        pred_norm = min(range(4), key=lambda i: (avgs[i], i))
        margin = sorted(avgs)[1] - sorted(avgs)[0]
        right_norm += pred_norm == label
        right_sum += pred_sum == label
        out.append(dict(rows=rows, ctx_len=len(ctx), label=label, sum=sums, count=counts,
                        avg=avgs, pred_sum=pred_sum, pred_norm=pred_norm, margin_norm=margin))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(dict(examples=out, correct_norm=right_norm, correct_sum=right_sum), f, indent=1)
        f.write("\n")
    print(f"{len(out)} examples: acc_norm {right_norm}/{len(out)}, acc {right_sum}/{len(out)}")


if __name__ == "__main__":
    main()
