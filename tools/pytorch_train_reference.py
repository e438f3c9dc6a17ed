#!/usr/bin/env python3
"""PyTorch's side of `train`: GPT-2's training recipe as the engine's `train` runs it, written
here independently, on a checkpoint and a token shard, writing each step's loss, learning rate and
gradient norm. tests/train_reference.rs runs `train` on the same files and compares its log.jsonl.

The model is tools/pytorch_reference.py's GPT (fp32, explicit-matmul attention), built from the
llm.c checkpoint given. Per step s (from 0) of --steps, with K = --grad-accum micro-batches:

  data      the shard's tokens in order (`train` without --shuffle): micro-batch m (from 0) of the
            run is chunk m mod n_chunks, tokens [k*B*T, k*B*T + B*T + 1) with k that chunk,
            n_chunks = (N - 1) // (B*T); x its first B*T tokens, y its last B*T, both (B, T).
            With --shuffle SEED (`train --shuffle --seed SEED`, one shard): each epoch serves the
            chunks in a fresh order, a Fisher-Yates shuffle (i from n_chunks - 1 down to 1, swap
            i with j uniform in [0, i] by Lemire's multiply-shift, (x * (i + 1)) >> 64) drawing
            from one xoshiro256** stream whose state is SplitMix64's first four outputs from SEED
  gradient  the mean of the K micro-batches' mean cross-entropy (each backward scaled by 1/K);
            the step's loss the same mean of their losses
  norm      the global L2 norm of the gradients (fp32 gradients summed in float64), before any
            clipping; then torch.nn.utils.clip_grad_norm_(max_norm=--grad-clip) if it is > 0
  lr        a linear warm-up over --warmup steps (step s < warmup: lr * (s + 1) / warmup), then
            half a cosine from lr down to lr * --lr-final-frac: step s >= warmup at
            min + (lr - min) * (1 + cos(pi * p)) / 2, p = (s - warmup) / (steps - warmup - 1)
            (p = 0 where that span is 0), so the first decay step runs at the peak and the last at
            the final rate; the rate is rounded to fp32, as `train` passes it on
  AdamW     torch.optim.AdamW(betas, eps, fused=False, foreach=False) with two groups: weight
            decay --weight-decay on the parameters of two or more dimensions (wte, wpe and the
            four linear weights of each layer), 0 on the biases and LayerNorm parameters
  val       before the first step, after every --val-every steps and after the last: the mean
            (summed in float64) of the losses of the validation shard's first --val-batches
            chunks of B x T (fewer where it holds fewer), from its start each time

The output file has one line per step, numbered from 1 as `train` numbers its steps:
  `step S loss X lr L norm N` (X, L and N with 9 significant digits: exact fp32 values),
and one per validation, after S steps: `val S loss X`.

With --write-shard the shards are written first (llm.c format: 256 int32 header, magic 20240520,
version 1, token count; uint16 tokens): --shard-tokens training tokens, a random phrase of
--phrase tokens from [0, V) repeated, each token replaced by a random one with probability 0.1 (a
corpus a model can learn in a few steps), from a torch.Generator seeded with --seed; then
--val-tokens validation tokens, the same phrase with noise drawn on from the same generator.

Usage (the fixture of tests/train_reference.rs; tests/fixtures/README.md):
  python tools/pytorch_train_reference.py --model tests/fixtures/ref_tiny_model.bin \\
      --shard tests/fixtures/train_tiny_shard.bin --val-shard tests/fixtures/train_tiny_val.bin \\
      --write-shard --shard-tokens 700 --val-tokens 300 --seed 5 --batch 2 --seq 8 \\
      --grad-accum 2 --steps 30 --lr 1e-3 --warmup 5 --lr-final-frac 0.1 --weight-decay 0.1 \\
      --grad-clip 1 --val-every 10 --val-batches 8 --out tests/fixtures/train_tiny_steps.txt
and the shuffled run: the same without --write-shard, with --shuffle 1337 and
--out tests/fixtures/train_tiny_shuffled_steps.txt.
"""

import argparse
import math
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_reference import model_from_llmc, read_checkpoint  # noqa: E402

SHARD_MAGIC = 20240520
SHARD_VERSION = 1


def write_shards(paths_and_sizes, v, phrase_len, seed):
    """Each (path, n): n tokens of one random phrase repeated, with 10% noise."""
    gen = torch.Generator().manual_seed(seed)
    phrase = torch.randint(0, v, (phrase_len,), generator=gen)
    for path, n in paths_and_sizes:
        tokens = phrase.repeat(n // phrase_len + 1)[:n].clone()
        noise = torch.rand(n, generator=gen) < 0.1
        tokens[noise] = torch.randint(0, v, (int(noise.sum()),), generator=gen)
        header = [SHARD_MAGIC, SHARD_VERSION, n] + [0] * 253
        with open(path, "wb") as f:
            f.write(struct.pack("<256i", *header))
            f.write(struct.pack(f"<{n}H", *tokens.tolist()))


def read_shard(path):
    raw = np.fromfile(path, dtype="<u1")
    h = raw[:1024].view("<i4")
    if h[0] != SHARD_MAGIC or h[1] != SHARD_VERSION:
        raise ValueError(f"{path}: bad magic/version {h[0]} {h[1]}")
    tokens = raw[1024:].view("<u2")
    if tokens.size != h[2]:
        raise ValueError(f"{path}: {tokens.size} tokens, the header says {h[2]}")
    return tokens.astype(np.int64)


M64 = (1 << 64) - 1


class Xoshiro256:
    """xoshiro256** (Blackman and Vigna), its state from SplitMix64 seeded with `seed`."""

    def __init__(self, seed=None, state=None):
        if state is None:
            x, state = seed, []
            for _ in range(4):
                x = (x + 0x9E3779B97F4A7C15) & M64
                z = x
                z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
                z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
                state.append(z ^ (z >> 31))
        self.s = list(state)

    @staticmethod
    def rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & M64

    def next(self):
        s = self.s
        result = (self.rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self.rotl(s[3], 45)
        return result

    def shuffle(self, v):
        for i in range(len(v) - 1, 0, -1):
            j = (self.next() * (i + 1)) >> 64
            v[i], v[j] = v[j], v[i]


# the published vectors: xoshiro256** from {1, 2, 3, 4}; SplitMix64's outputs from 0
_x = Xoshiro256(state=[1, 2, 3, 4])
assert [_x.next() for _ in range(4)] == [11520, 0, 1509978240, 1215971899390074240]
assert Xoshiro256(seed=0).s == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F,
                                0xF88BB8A8724C81EC]


def chunk_order(n_chunks, shuffle_seed):
    """The chunk of each micro-batch of the run, epoch after epoch (a generator)."""
    rng = Xoshiro256(seed=shuffle_seed) if shuffle_seed is not None else None
    while True:
        order = list(range(n_chunks))
        if rng is not None:
            rng.shuffle(order)
        yield from order


def lr_at(s, args):
    """The rate of step s (from 0), as a Python float of the fp32 value `train` uses."""
    if s < args.warmup:
        lr = args.lr * (s + 1) / args.warmup
    else:
        low = args.lr * args.lr_final_frac
        span = args.steps - args.warmup - 1
        p = (s - args.warmup) / span if span > 0 else 0.0
        lr = low + (args.lr - low) * 0.5 * (1.0 + math.cos(math.pi * p))
    # rounded to fp32, then as the shortest decimal that reads back as it (what a user of
    # PyTorch would have written, and what the engine widens an f32 rate to)
    return float(str(np.float32(lr)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="llm.c checkpoint (version 3) to start from")
    ap.add_argument("--shard", required=True, help="the training shard")
    ap.add_argument("--val-shard", required=True, help="the validation shard")
    ap.add_argument("--write-shard", action="store_true", help="write the shards first")
    ap.add_argument("--shard-tokens", type=int, default=700)
    ap.add_argument("--val-tokens", type=int, default=300)
    ap.add_argument("--val-every", type=int, default=10)
    ap.add_argument("--val-batches", type=int, default=8)
    ap.add_argument("--phrase", type=int, default=37)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--batch", type=int, required=True, help="B")
    ap.add_argument("--seq", type=int, required=True, help="T")
    ap.add_argument("--grad-accum", type=int, default=1, help="K")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--lr-final-frac", type=float, default=0.0)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--shuffle", type=int, default=None, metavar="SEED",
                    help="serve the chunks shuffled, as train --shuffle --seed SEED")
    ap.add_argument("--out", required=True, help="the steps file to write")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_float32_matmul_precision("highest")

    cfg, params = read_checkpoint(args.model)
    if args.write_shard:
        write_shards([(args.shard, args.shard_tokens), (args.val_shard, args.val_tokens)],
                     cfg["v"], args.phrase, args.seed)
    tokens, val_tokens = read_shard(args.shard), read_shard(args.val_shard)
    b, t, k = args.batch, args.seq, args.grad_accum
    n_chunks = (tokens.size - 1) // (b * t)
    n_val = min(args.val_batches, (val_tokens.size - 1) // (b * t))
    for path, toks, n in [(args.shard, tokens, n_chunks), (args.val_shard, val_tokens, n_val)]:
        if n == 0:
            ap.error(f"{path}: {toks.size} tokens hold no chunk of B*T+1 = {b * t + 1}")
        if toks.max() >= cfg["v"]:
            ap.error(f"{path}: a token id is outside [0, V={cfg['v']})")

    def batch(toks, c):
        chunk = torch.from_numpy(toks[c * b * t: c * b * t + b * t + 1])
        return chunk[:-1].view(b, t), chunk[1:].view(b, t)

    def validate(after):
        total = 0.0
        with torch.no_grad():
            for c in range(n_val):
                total += float(np.float32(model(*batch(val_tokens, c))[1].item()))
        lines.append(f"val {after} loss {float(np.float32(total / n_val)):.9g}")

    model = model_from_llmc(cfg, params)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps, fused=False, foreach=False)

    lines = []
    chunks = chunk_order(n_chunks, args.shuffle)
    validate(0)
    for s in range(args.steps):
        opt.zero_grad(set_to_none=True)
        loss_sum = np.float32(0.0)
        for _ in range(k):
            x, y = batch(tokens, next(chunks))
            _, loss = model(x, y)
            (loss / k).backward()
            # (summed in fp32 as the engine sums it)
            loss_sum = np.float32(loss_sum + np.float32(loss.item()) / np.float32(k))
        norm = math.sqrt(sum(p.grad.double().square().sum().item() for p in model.parameters()))
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip, foreach=False)
        lr = lr_at(s, args)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        lines.append(f"step {s + 1} loss {float(loss_sum):.9g} lr {lr:.9g} "
                     f"norm {float(np.float32(norm)):.9g}")
        if (s + 1) % args.val_every == 0 or s + 1 == args.steps:
            validate(s + 1)
    with open(args.out, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
