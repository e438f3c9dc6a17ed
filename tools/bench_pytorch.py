#!/usr/bin/env python3
"""PyTorch GPT-2 training-step benchmark: the baseline our engine is compared with.

Times full training steps (forward, backward, AdamW) of GPT-2 dN (L=N, NH=N, C=64N, V=50257
padded to 50304 like llm.c, maxT=1024) on random tokens, on the CPU or a CUDA GPU, in fp32 or
with bf16 autocast, eager or under torch.compile. Prints one JSON line per configuration:

    {"impl": "pytorch", "device": ..., "model": "d12", "B": 4, "T": 64, "ms_per_step": ..., ...}

Usage:
    python3 tools/bench_pytorch.py --device cpu --model d12 --batch 4 --seq 64 --steps 5
    python3 tools/bench_pytorch.py --device cuda --batch 4,8,16 --seq 1024 --compile --bf16
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, nh, fused_attention):
        super().__init__()
        self.nh = nh
        self.fused = fused_attention
        self.ln_1 = nn.LayerNorm(c)
        self.c_attn = nn.Linear(c, 3 * c)
        self.attn_proj = nn.Linear(c, c)
        self.ln_2 = nn.LayerNorm(c)
        self.c_fc = nn.Linear(c, 4 * c)
        self.mlp_proj = nn.Linear(4 * c, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.nh, c // self.nh).transpose(1, 2) for z in (q, k, v))
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        x = x + self.attn_proj(y)
        x = x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x


class GPT(nn.Module):
    def __init__(self, depth, vocab=50304, max_t=1024, fused_attention=True):
        super().__init__()
        c = 64 * depth
        self.wte = nn.Embedding(vocab, c)
        self.wpe = nn.Embedding(max_t, c)
        self.blocks = nn.ModuleList(Block(c, depth, fused_attention) for _ in range(depth))
        self.ln_f = nn.LayerNorm(c)
        # GPT-2's initialisation (timing does not depend on it, but the printed loss then makes sense)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * depth) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx, targets):
        t = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.t()  # tied weights
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))


def parse_depth(model):
    if not (model.startswith("d") and model[1:].isdigit() and int(model[1:]) > 0):
        raise SystemExit(f"error: unknown model descriptor '{model}': expected dN, e.g. d12")
    return int(model[1:])


def parse_list(text, name):
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise SystemExit(f"error: --{name} takes positive integers separated by commas, got '{text}'")
    if not values or min(values) < 1:
        raise SystemExit(f"error: --{name} takes positive integers, got '{text}'")
    return values


def bench(args, b, t):
    dev = torch.device(args.device)
    depth = parse_depth(args.model)
    torch.manual_seed(0)
    model = GPT(depth, fused_attention=not args.plain_attention).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=dev.type == "cuda")
    step_fn = model
    if args.compile:
        step_fn = torch.compile(model)
    x = torch.randint(0, 50257, (b, t), device=dev)
    y = torch.randint(0, 50257, (b, t), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = step_fn(x, y)
        loss.backward()
        opt.step()
        return loss

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    ms = (time.perf_counter() - start) * 1e3 / args.steps
    return {
        "impl": "pytorch" + ("-compile" if args.compile else "-eager"),
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "precision": "bf16-autocast" if args.bf16 else "fp32",
        "model": args.model,
        "params": n_params,
        "B": b,
        "T": t,
        "ms_per_step": round(ms, 3),
        "tokens_per_s": round(b * t / (ms / 1e3), 1),
        "peak_mem_bytes": torch.cuda.max_memory_allocated() if dev.type == "cuda" else None,
        "loss": loss.item(),
        "torch": torch.__version__,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default="d12")
    p.add_argument("--batch", default="4", help="B, or several separated by commas")
    p.add_argument("--seq", default="64", help="T, or several separated by commas")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--plain-attention", action="store_true", help="explicit softmax attention instead of SDPA")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("error: --steps must be at least 1 and --warmup not negative")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but PyTorch sees no CUDA GPU")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    parse_depth(args.model)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for b in parse_list(args.batch, "batch"):
        for t in parse_list(args.seq, "seq"):
            try:
                print(json.dumps(bench(args, b, t)), flush=True)
            except torch.OutOfMemoryError:
                print(json.dumps({"impl": "pytorch", "model": args.model, "B": b, "T": t, "error": "out of memory"}), flush=True)
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
