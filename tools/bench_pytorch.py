#!/usr/bin/env python3
"""PyTorch GPT-2 training-step benchmark: the baseline our engine is compared with.

Times full training steps (forward, backward, AdamW) of GPT-2 dN (the engine's descriptor: L=N,
C and NH from bench_lib.model_dims, V=50257 padded to 50304 like llm.c, maxT=1024) on random tokens, on the CPU or a CUDA GPU, in fp32, TF32
or with bf16 autocast, eager or under torch.compile. A step is what the engine's training step
does: zero_grad, forward, backward, the global gradient norm with clipping to 1.0, fused AdamW.
Each timed step ends with a device synchronisation (the engine reads the loss and the norm back
every step too); ms_per_step is the median over the timed steps. Prints one JSON line per
configuration:

    {"impl": "pytorch-eager", "device": ..., "model": "d12", "B": 4, "T": 64, "ms_per_step": ..., ...}

or, where the configuration does not fit in memory, {"impl": ..., "B": .., "T": .., "error": "out
of memory", ...}. tools/bench runs this script once per configuration and reads that line.

Usage:
    python3 tools/bench_pytorch.py --device cpu --model d12 --batch 4 --seq 64 --steps 5
    python3 tools/bench_pytorch.py --device cuda --batch 4,8,16 --seq 1024 --compile --bf16
"""
import argparse
import gc
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench_lib import model_dims  # beside this file (the standard library only)


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
        _, nh, c, _, _, _ = model_dims(depth)
        self.wte = nn.Embedding(vocab, c)
        self.wpe = nn.Embedding(max_t, c)
        self.blocks = nn.ModuleList(Block(c, nh, fused_attention) for _ in range(depth))
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
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        return loss

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    sync()
    step_ms = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step()
        sync()
        step_ms.append((time.perf_counter() - start) * 1e3)
    ms = statistics.median(step_ms)
    if dev.type == "cuda":
        peak, peak_alloc, source = torch.cuda.max_memory_reserved(), torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_reserved"
    else:
        peak, peak_alloc, source = host_peak_rss_bytes(), None, "peak RSS of the process (VmHWM)"
    return {
        "impl": impl_name(args),
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "precision": precision_name(args),
        "model": args.model,
        "params": n_params,
        "B": b,
        "T": t,
        "ms_per_step": round(ms, 3),
        "ms_mean": round(statistics.fmean(step_ms), 3),
        "step_ms": [round(m, 3) for m in step_ms],
        "tokens_per_s": round(b * t / (ms / 1e3), 1),
        "peak_mem_bytes": peak,
        "peak_mem_allocated_bytes": peak_alloc,
        "peak_mem_source": source,
        "loss": loss.item(),
        "torch": torch.__version__,
    }


def impl_name(args):
    return "pytorch-compile" if args.compile else "pytorch-eager"


def precision_name(args):
    return "bf16" if args.bf16 else "tf32" if args.tf32 else "fp32"


def host_peak_rss_bytes():
    """The process's peak resident memory (VmHWM, as the engine reports on the CPU), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def is_out_of_memory(e):
    """torch.OutOfMemoryError, or an error from deeper down (cuBLAS, a compiled kernel) that says so."""
    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "cuda_error_out_of_memory" in text


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
    p.add_argument("--tf32", action="store_true", help="TF32 tensor cores for fp32 matrix products")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this (0: no norm, no clip)")
    p.add_argument("--plain-attention", action="store_true", help="explicit softmax attention instead of SDPA")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("error: --steps must be at least 1 and --warmup not negative")
    if args.bf16 and args.tf32:
        raise SystemExit("error: --bf16 and --tf32 are two precisions: give one")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but PyTorch sees no CUDA GPU")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    parse_depth(args.model)
    # fp32 means fp32: no TF32 unless asked (PyTorch's own default for matmuls is also off)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    for b in parse_list(args.batch, "batch"):
        for t in parse_list(args.seq, "seq"):
            failure = None
            try:
                print(json.dumps(bench(args, b, t)), flush=True)
            except Exception as e:  # an out-of-memory error is a result; anything else is not
                if not is_out_of_memory(e):
                    raise
                failure = {"impl": impl_name(args), "precision": precision_name(args), "model": args.model,
                           "B": b, "T": t, "error": "out of memory", "message": str(e).strip()[:300]}
            if failure is not None:
                # the exception (and the frames holding the model) is gone: give the memory back
                gc.collect()
                if args.device == "cuda":
                    torch.cuda.empty_cache()
                print(json.dumps(failure), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
