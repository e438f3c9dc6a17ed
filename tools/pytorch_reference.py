#!/usr/bin/env python3
"""An independent PyTorch GPT-2 that writes llm.c-format reference files (test fixtures).

The model is GPT-2 as llm.c's train_gpt2.py defines it, written out here with explicit fp32
matmuls (no flash / SDPA attention) so that the numbers are an exact, deterministic reference for
the Rust engine. For one random batch it writes:

  PATH_model.bin   llm.c checkpoint (magic 20240326, version 3): the parameters BEFORE any update
  PATH_state.bin   llm.c debug state (magic 20240327, version 2): x, y, logits, loss and the
                   gradients of every parameter for that batch, same model
  PATH_losses.txt  `step I loss X norm N` for N AdamW steps on the same batch: the loss before
                   step I's update and the global L2 norm of its gradients before any clipping
                   (both printed with 9 significant digits so the fp32 value is exact)

With --grad-clip G each step's gradients are clipped to global norm G (torch.nn.utils.
clip_grad_norm_, llm.c's and the engine's --grad-clip) before the update. With --losses-out PATH
only the losses file is written, to PATH (the model and state files of PREFIX are left as they
are: a second trajectory from the same start, as tests/fixtures/ref_tiny_clip_losses.txt is).

Dimension names: V vocabulary, Vp V padded to a multiple of 128, maxT longest sequence, L layers,
NH heads, C channels, hs = C / NH, B batch, T sequence length.

File layouts (little-endian; the header is 256 int32, unused entries zero):
  checkpoint: header [20240326, 3, maxT, V, L, NH, C, Vp], then float32 parameters in this order:
    wte (Vp, C) [rows V..Vp zero], wpe (maxT, C), ln1w (L, C), ln1b (L, C), qkvw (L, 3C, C),
    qkvb (L, 3C), attprojw (L, C, C), attprojb (L, C), ln2w (L, C), ln2b (L, C), fcw (L, 4C, C),
    fcb (L, 4C), fcprojw (L, C, 4C), fcprojb (L, C), lnfw (C), lnfb (C)
    (linear weights as PyTorch stores them: (out_features, in_features)).
  debug state: header [20240327, 2, B, T], then x (B*T int32), y (B*T int32),
    logits (B*T*V float32, only the V real columns), loss (1 float32), then the gradients of all
    parameters in the checkpoint's order and shapes (the wte gradient padded to Vp rows with zeros).

Initialisation (one torch.Generator seeded with --seed, drawn in the order of
model.named_parameters(), see `init_weights`): GPT-2's N(0, 0.02) for wte, wpe and every linear
weight, N(0, 0.02/sqrt(2L)) for the two residual projections (attn.c_proj, mlp.c_proj); then, so
that a test exercises biases and LayerNorm affine parameters, every bias gets +N(0, 0.02), every
LayerNorm weight is 1 + N(0, 0.1) and every LayerNorm bias N(0, 0.02). With --qk-std S the q and k
rows of every c_attn weight are scaled to std S (at GPT-2's 0.02 the attention is nearly uniform
and the q/k gradients tiny; S = 0.25 makes it peaked). The tokens (--tokens random)
are B*T+1 ids drawn uniformly from [0, V) with a second generator seeded with --seed + 1;
x = tokens[:-1], y = tokens[1:], viewed as (B, T).

AdamW: torch.optim.AdamW(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01) on ALL
parameters (weight decay included on biases, LayerNorm parameters and embeddings),
fused=False, foreach=False.

Usage (the fixtures in tests/fixtures are made by the commands in tests/fixtures/README.md):
  python tools/pytorch_reference.py --seed 1234 --vocab 64 --max-seq 16 --layers 2 --heads 4 \\
      --channels 32 --batch 2 --seq 8 --steps 10 --out-prefix tests/fixtures/ref_tiny --check --fd-check
"""

import argparse
import copy
import math
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CHECKPOINT_MAGIC = 20240326
CHECKPOINT_VERSION = 3
STATE_MAGIC = 20240327
STATE_VERSION = 2
HEADER_INTS = 256
VOCAB_PAD = 128

PARAM_NAMES = [
    "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
    "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb",
]


# ----------------------------------------------------------------------------------------------
# the model


class CausalSelfAttention(nn.Module):
    def __init__(self, c, nh, maxt):
        super().__init__()
        self.nh = nh
        self.c_attn = nn.Linear(c, 3 * c)  # weight (3C, C): rows 0..C q, C..2C k, 2C..3C v
        self.c_proj = nn.Linear(c, c)  # weight (C, C)
        # mask[t, t2] = True where t2 <= t
        self.register_buffer("mask", torch.tril(torch.ones(maxt, maxt, dtype=torch.bool)))

    def forward(self, x):  # x (B, T, C)
        b, t, c = x.shape
        hs = c // self.nh
        qkv = self.c_attn(x)  # (B, T, 3C)
        q, k, v = qkv.split(c, dim=2)  # each (B, T, C)
        q = q.view(b, t, self.nh, hs).transpose(1, 2)  # (B, NH, T, hs)
        k = k.view(b, t, self.nh, hs).transpose(1, 2)  # (B, NH, T, hs)
        v = v.view(b, t, self.nh, hs).transpose(1, 2)  # (B, NH, T, hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, NH, T, T)
        att = att.masked_fill(~self.mask[:t, :t], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = att @ v  # (B, NH, T, hs)
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_fc = nn.Linear(c, 4 * c)  # weight (4C, C)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * c, c)  # weight (C, 4C)

    def forward(self, x):  # x (B, T, C)
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, c, nh, maxt):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c, eps=1e-5)
        self.attn = CausalSelfAttention(c, nh, maxt)
        self.ln_2 = nn.LayerNorm(c, eps=1e-5)
        self.mlp = MLP(c)

    def forward(self, x):  # x (B, T, C)
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, v, maxt, l, nh, c):
        super().__init__()
        assert c % nh == 0, f"C={c} is not divisible by NH={nh}"
        self.v, self.maxt, self.l, self.nh, self.c = v, maxt, l, nh, c
        self.wte = nn.Embedding(v, c)  # (V, C), tied with the output projection
        self.wpe = nn.Embedding(maxt, c)  # (maxT, C)
        self.h = nn.ModuleList([Block(c, nh, maxt) for _ in range(l)])
        self.ln_f = nn.LayerNorm(c, eps=1e-5)

    def forward(self, idx, targets):  # idx, targets (B, T) int64
        b, t = idx.shape
        assert t <= self.maxt, f"T={t} exceeds maxT={self.maxt}"
        pos = torch.arange(t, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        logits = x @ self.wte.weight.t()  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, self.v), targets.reshape(-1))  # mean over B*T
        return logits, loss


def init_weights(model, gen, qk_std=None):
    """GPT-2's initialisation, then the fixture's perturbation of biases and LayerNorms.

    One generator, drawn in model.named_parameters() order; each parameter takes its base draw
    and then its perturbation before the next parameter. With qk_std, the q and k rows of every
    c_attn weight (rows 0..2C) are scaled from std 0.02 to std qk_std after the draw, so that the
    attention is peaked instead of nearly uniform (same random numbers, scaled)."""
    std_resid = 0.02 / math.sqrt(2 * model.l)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("c_attn.weight") and qk_std is not None:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
                p[: 2 * model.c] *= qk_std / 0.02
                continue
            if ".ln_" in name or name.startswith("ln_f"):
                if name.endswith(".weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
                else:
                    p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))  # 0 + N(0, 0.02)
            elif name.endswith("c_proj.weight"):
                p.copy_(std_resid * torch.randn(p.shape, generator=gen))
            else:  # wte, wpe, c_attn.weight, c_fc.weight
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))


# ----------------------------------------------------------------------------------------------
# llm.c layout


def llmc_tensors(model, vp, grads=False):
    """The 16 tensors in checkpoint order, each stacked over layers; wte padded to Vp rows.

    With grads=True the parameters' .grad are used instead of the values."""

    def get(p):
        return p.grad if grads else p

    def stack(fn):
        return torch.stack([get(fn(blk)).detach() for blk in model.h])

    wte = get(model.wte.weight).detach()  # (V, C)
    wte_padded = torch.zeros(vp, model.c, dtype=wte.dtype)  # (Vp, C)
    wte_padded[: model.v] = wte
    return [
        ("wte", wte_padded),
        ("wpe", get(model.wpe.weight).detach()),  # (maxT, C)
        ("ln1w", stack(lambda b: b.ln_1.weight)),  # (L, C)
        ("ln1b", stack(lambda b: b.ln_1.bias)),  # (L, C)
        ("qkvw", stack(lambda b: b.attn.c_attn.weight)),  # (L, 3C, C)
        ("qkvb", stack(lambda b: b.attn.c_attn.bias)),  # (L, 3C)
        ("attprojw", stack(lambda b: b.attn.c_proj.weight)),  # (L, C, C)
        ("attprojb", stack(lambda b: b.attn.c_proj.bias)),  # (L, C)
        ("ln2w", stack(lambda b: b.ln_2.weight)),  # (L, C)
        ("ln2b", stack(lambda b: b.ln_2.bias)),  # (L, C)
        ("fcw", stack(lambda b: b.mlp.c_fc.weight)),  # (L, 4C, C)
        ("fcb", stack(lambda b: b.mlp.c_fc.bias)),  # (L, 4C)
        ("fcprojw", stack(lambda b: b.mlp.c_proj.weight)),  # (L, C, 4C)
        ("fcprojb", stack(lambda b: b.mlp.c_proj.bias)),  # (L, C)
        ("lnfw", get(model.ln_f.weight).detach()),  # (C)
        ("lnfb", get(model.ln_f.bias).detach()),  # (C)
    ]


def param_shapes(v, vp, maxt, l, nh, c):
    """The checkpoint's tensor shapes, by name, computed from the dimensions alone."""
    del v, nh
    return {
        "wte": (vp, c), "wpe": (maxt, c), "ln1w": (l, c), "ln1b": (l, c),
        "qkvw": (l, 3 * c, c), "qkvb": (l, 3 * c), "attprojw": (l, c, c), "attprojb": (l, c),
        "ln2w": (l, c), "ln2b": (l, c), "fcw": (l, 4 * c, c), "fcb": (l, 4 * c),
        "fcprojw": (l, c, 4 * c), "fcprojb": (l, c), "lnfw": (c,), "lnfb": (c,),
    }


def header_bytes(values):
    h = np.zeros(HEADER_INTS, dtype="<i4")
    h[: len(values)] = values
    return h.tobytes()


def f32_bytes(t):
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype="<f4").tobytes()


def write_checkpoint(path, model, vp):
    m = model
    parts = [header_bytes([CHECKPOINT_MAGIC, CHECKPOINT_VERSION, m.maxt, m.v, m.l, m.nh, m.c, vp])]
    parts += [f32_bytes(t) for _, t in llmc_tensors(model, vp)]
    with open(path, "wb") as f:
        f.write(b"".join(parts))


def write_state(path, model, vp, x, y, logits, loss):
    b, t = x.shape
    parts = [header_bytes([STATE_MAGIC, STATE_VERSION, b, t])]
    parts.append(np.ascontiguousarray(x.numpy(), dtype="<i4").tobytes())  # (B, T)
    parts.append(np.ascontiguousarray(y.numpy(), dtype="<i4").tobytes())  # (B, T)
    parts.append(f32_bytes(logits))  # (B, T, V)
    parts.append(f32_bytes(loss.reshape(1)))  # (1)
    parts += [f32_bytes(t) for _, t in llmc_tensors(model, vp, grads=True)]
    with open(path, "wb") as f:
        f.write(b"".join(parts))


# ----------------------------------------------------------------------------------------------
# reading back (numpy only, offsets computed from the header; independent of the writer)


def read_checkpoint(path):
    raw = np.fromfile(path, dtype="<u1")
    if raw.size < HEADER_INTS * 4:
        raise ValueError(f"{path}: shorter than the header")
    h = raw[: HEADER_INTS * 4].view("<i4")
    if h[0] != CHECKPOINT_MAGIC or h[1] != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: bad magic/version {h[0]} {h[1]}")
    if np.any(h[8:] != 0):
        raise ValueError(f"{path}: header entries 8..256 are not zero")
    maxt, v, l, nh, c, vp = (int(h[i]) for i in range(2, 8))
    shapes = param_shapes(v, vp, maxt, l, nh, c)
    floats = raw[HEADER_INTS * 4:].view("<f4")
    n = sum(int(np.prod(s)) for s in shapes.values())
    if floats.size != n:
        raise ValueError(f"{path}: {floats.size} floats after the header, expected {n}")
    params, off = {}, 0
    for name in PARAM_NAMES:
        k = int(np.prod(shapes[name]))
        params[name] = floats[off: off + k].reshape(shapes[name])
        off += k
    cfg = dict(maxt=maxt, v=v, l=l, nh=nh, c=c, vp=vp)
    return cfg, params


def read_state(path, cfg):
    raw = np.fromfile(path, dtype="<u1")
    h = raw[: HEADER_INTS * 4].view("<i4")
    if h[0] != STATE_MAGIC or h[1] != STATE_VERSION:
        raise ValueError(f"{path}: bad magic/version {h[0]} {h[1]}")
    if np.any(h[4:] != 0):
        raise ValueError(f"{path}: header entries 4..256 are not zero")
    b, t = int(h[2]), int(h[3])
    body = raw[HEADER_INTS * 4:]
    shapes = param_shapes(cfg["v"], cfg["vp"], cfg["maxt"], cfg["l"], cfg["nh"], cfg["c"])
    nparams = sum(int(np.prod(s)) for s in shapes.values())
    expect = 4 * (2 * b * t + b * t * cfg["v"] + 1 + nparams)
    if body.size != expect:
        raise ValueError(f"{path}: {body.size} bytes after the header, expected {expect}")
    off = 0

    def take(n, dtype):
        nonlocal off
        a = body[off: off + 4 * n].view(dtype)
        off += 4 * n
        return a

    x = take(b * t, "<i4").reshape(b, t)
    y = take(b * t, "<i4").reshape(b, t)
    logits = take(b * t * cfg["v"], "<f4").reshape(b, t, cfg["v"])
    loss = float(take(1, "<f4")[0])
    grads = {}
    for name in PARAM_NAMES:
        grads[name] = take(int(np.prod(shapes[name])), "<f4").reshape(shapes[name])
    return dict(b=b, t=t, x=x, y=y, logits=logits, loss=loss, grads=grads)


def model_from_llmc(cfg, params, dtype=torch.float32):
    """A GPT built from a checkpoint's tensors (by name and layer, not by the writer's code)."""
    m = GPT(cfg["v"], cfg["maxt"], cfg["l"], cfg["nh"], cfg["c"])

    def t(a):
        return torch.from_numpy(np.array(a, dtype=np.float32))

    with torch.no_grad():
        m.wte.weight.copy_(t(params["wte"][: cfg["v"]]))
        m.wpe.weight.copy_(t(params["wpe"]))
        for i, blk in enumerate(m.h):
            blk.ln_1.weight.copy_(t(params["ln1w"][i]))
            blk.ln_1.bias.copy_(t(params["ln1b"][i]))
            blk.attn.c_attn.weight.copy_(t(params["qkvw"][i]))
            blk.attn.c_attn.bias.copy_(t(params["qkvb"][i]))
            blk.attn.c_proj.weight.copy_(t(params["attprojw"][i]))
            blk.attn.c_proj.bias.copy_(t(params["attprojb"][i]))
            blk.ln_2.weight.copy_(t(params["ln2w"][i]))
            blk.ln_2.bias.copy_(t(params["ln2b"][i]))
            blk.mlp.c_fc.weight.copy_(t(params["fcw"][i]))
            blk.mlp.c_fc.bias.copy_(t(params["fcb"][i]))
            blk.mlp.c_proj.weight.copy_(t(params["fcprojw"][i]))
            blk.mlp.c_proj.bias.copy_(t(params["fcprojb"][i]))
        m.ln_f.weight.copy_(t(params["lnfw"]))
        m.ln_f.bias.copy_(t(params["lnfb"]))
    return m.to(dtype)


def torch_param_for(model, name, index):
    """(torch parameter, index inside it) for element `index` of llm.c tensor `name`."""
    if name == "wte":
        return model.wte.weight, index
    if name == "wpe":
        return model.wpe.weight, index
    if name == "lnfw":
        return model.ln_f.weight, index
    if name == "lnfb":
        return model.ln_f.bias, index
    layer, rest = index[0], index[1:]
    blk = model.h[layer]
    p = {
        "ln1w": blk.ln_1.weight, "ln1b": blk.ln_1.bias,
        "qkvw": blk.attn.c_attn.weight, "qkvb": blk.attn.c_attn.bias,
        "attprojw": blk.attn.c_proj.weight, "attprojb": blk.attn.c_proj.bias,
        "ln2w": blk.ln_2.weight, "ln2b": blk.ln_2.bias,
        "fcw": blk.mlp.c_fc.weight, "fcb": blk.mlp.c_fc.bias,
        "fcprojw": blk.mlp.c_proj.weight, "fcprojb": blk.mlp.c_proj.bias,
    }[name]
    return p, rest


# ----------------------------------------------------------------------------------------------
# checks


def check_losses_file(path, args, losses):
    """The losses file's lines: `step I loss X norm N`, I from 0, X the fp32 loss exactly."""
    with open(path) as f:
        lines = f.read().splitlines()
    assert len(lines) == args.steps, "losses.txt line count"
    for i, line in enumerate(lines):
        w = line.split()
        assert len(w) == 6 and w[0] == "step" and int(w[1]) == i and w[2] == "loss", line
        assert w[4] == "norm" and float(w[5]) > 0, line
        assert np.float32(float(w[3])) == np.float32(losses[i]), f"losses.txt line {i} round trip"


def check_start(prefix, model, vp):
    """With --losses-out: PREFIX's checkpoint holds exactly the parameters this run started from
    (so the trajectory written belongs to that model)."""
    with open(prefix + "_model.bin", "rb") as f:
        on_disk = f.read()
    with tempfile.TemporaryDirectory() as d:
        write_checkpoint(os.path.join(d, "m.bin"), model, vp)
        with open(os.path.join(d, "m.bin"), "rb") as f:
            assert f.read() == on_disk, f"{prefix}_model.bin is not the model this run starts from"
    print(f"check ok: {prefix}_model.bin is this run's start")


def check_files(prefix, args, losses, losses_path):
    """Re-reads the written files with numpy and checks sizes, header, padding, and that a model
    rebuilt from the checkpoint reproduces the state's logits, loss and gradients."""
    cfg, params = read_checkpoint(prefix + "_model.bin")
    want = dict(maxt=args.max_seq, v=args.vocab, l=args.layers, nh=args.heads, c=args.channels,
                vp=args.vp)
    assert cfg == want, f"checkpoint header {cfg} != {want}"
    st = read_state(prefix + "_state.bin", cfg)
    assert (st["b"], st["t"]) == (args.batch, args.seq), "state header B, T"
    v, vp = cfg["v"], cfg["vp"]
    assert np.all(params["wte"][v:] == 0), "checkpoint wte rows V..Vp are not zero"
    assert np.all(st["grads"]["wte"][v:] == 0), "state wte grad rows V..Vp are not zero"
    assert np.all(st["y"][:, :-1] == st["x"][:, 1:]), "y is not x shifted by one"
    assert st["x"].min() >= 0 and st["x"].max() < v and st["y"].min() >= 0 and st["y"].max() < v
    for name in PARAM_NAMES:
        assert np.all(np.isfinite(params[name])) and np.all(np.isfinite(st["grads"][name])), name
        assert np.any(st["grads"][name] != 0), f"gradient of {name} is all zero"
    lnv = math.log(v)
    assert abs(st["loss"] - lnv) < 0.1, f"initial loss {st['loss']} is not close to ln(V)={lnv}"
    assert np.float32(losses[0]) == np.float32(st["loss"]), "losses.txt step 0 != state loss"
    check_losses_file(losses_path, args, losses)

    # Rebuild from the file (by name and layer) and recompute: must match bit for bit.
    m = model_from_llmc(cfg, params)
    x = torch.from_numpy(st["x"].astype(np.int64))
    y = torch.from_numpy(st["y"].astype(np.int64))
    logits, loss = m(x, y)
    loss.backward()
    assert np.array_equal(logits.detach().numpy(), st["logits"]), "logits differ on re-read"
    assert np.float32(loss.item()) == np.float32(st["loss"]), "loss differs on re-read"
    for name, g in llmc_tensors(m, vp, grads=True):
        assert np.array_equal(g.numpy(), st["grads"][name]), f"grad {name} differs on re-read"
    print(f"check ok: {prefix}_model.bin, {prefix}_state.bin, {prefix}_losses.txt "
          f"(loss {st['loss']:.6f}, ln V = {lnv:.6f})")


def fd_check(prefix, picks, h=1e-5):
    """Central finite differences in float64 on a float64 copy of the model rebuilt from the
    checkpoint, against the fp32 gradients read from the state file at the llm.c offsets."""
    cfg, params = read_checkpoint(prefix + "_model.bin")
    st = read_state(prefix + "_state.bin", cfg)
    m = model_from_llmc(cfg, params, dtype=torch.float64)
    x = torch.from_numpy(st["x"].astype(np.int64))
    y = torch.from_numpy(st["y"].astype(np.int64))
    _, loss = m(x, y)
    loss.backward()
    worst = 0.0
    for name, index in picks:
        p, pidx = torch_param_for(m, name, index)
        with torch.no_grad():
            orig = p[pidx].item()
            p[pidx] = orig + h
            _, lp = m(x, y)
            p[pidx] = orig - h
            _, lm = m(x, y)
            p[pidx] = orig
        fd = (lp.item() - lm.item()) / (2 * h)
        g32 = float(st["grads"][name][index])
        g64 = p.grad[pidx].item()
        rel = abs(g32 - fd) / max(abs(fd), 1e-12)
        worst = max(worst, rel)
        print(f"fd {name}{list(index)}: finite diff (f64) {fd:+.9e}  autograd f64 {g64:+.9e}  "
              f"file f32 {g32:+.9e}  rel err file vs fd {rel:.2e}")
    print(f"fd worst relative error {worst:.2e}")
    return worst


# ----------------------------------------------------------------------------------------------
# main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--vocab", type=int, required=True, help="V")
    ap.add_argument("--padded-vocab", type=int, default=None, help="Vp (default V rounded up to 128)")
    ap.add_argument("--max-seq", type=int, required=True, help="maxT")
    ap.add_argument("--layers", type=int, required=True, help="L")
    ap.add_argument("--heads", type=int, required=True, help="NH")
    ap.add_argument("--channels", type=int, required=True, help="C")
    ap.add_argument("--batch", type=int, required=True, help="B")
    ap.add_argument("--seq", type=int, required=True, help="T")
    ap.add_argument("--steps", type=int, default=10, help="AdamW steps on the batch")
    ap.add_argument("--out-prefix", required=True, help="writes PREFIX_{model,state}.bin, PREFIX_losses.txt")
    ap.add_argument("--tokens", choices=["random", "file"], default="random")
    ap.add_argument("--token-file", help="with --tokens file: whitespace-separated token ids (>= B*T+1)")
    ap.add_argument("--qk-std", type=float, default=None,
                    help="std of the q and k rows of c_attn weights (default GPT-2's 0.02)")
    ap.add_argument("--grad-clip", type=float, default=0.0,
                    help="clip every step's gradients to this global norm (0: no clipping)")
    ap.add_argument("--losses-out", default=None,
                    help="write only the losses file, to this path (PREFIX's model and state stay)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--check", action="store_true", help="re-read and verify the written files")
    ap.add_argument("--fd-check", action="store_true",
                    help="finite-difference a few gradient entries of the written state (float64)")
    args = ap.parse_args()

    v, maxt, l, nh, c, b, t = (args.vocab, args.max_seq, args.layers, args.heads, args.channels,
                               args.batch, args.seq)
    args.vp = args.padded_vocab if args.padded_vocab is not None else -(-v // VOCAB_PAD) * VOCAB_PAD
    if args.vp < v:
        ap.error(f"--padded-vocab {args.vp} is smaller than --vocab {v}")
    if c % nh != 0:
        ap.error(f"--channels {c} is not divisible by --heads {nh}")
    if not 1 <= t <= maxt:
        ap.error(f"--seq {t} must be in 1..=--max-seq {maxt}")
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    if not args.grad_clip >= 0:
        ap.error("--grad-clip must be at least 0 (0: no clipping)")

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.set_default_dtype(torch.float32)

    gen = torch.Generator().manual_seed(args.seed)
    model = GPT(v, maxt, l, nh, c)
    init_weights(model, gen, args.qk_std)

    if args.tokens == "random":
        tgen = torch.Generator().manual_seed(args.seed + 1)
        tokens = torch.randint(0, v, (b * t + 1,), generator=tgen, dtype=torch.long)
    else:
        if not args.token_file:
            ap.error("--tokens file needs --token-file")
        with open(args.token_file) as f:
            ids = [int(w) for w in f.read().split()]
        if len(ids) < b * t + 1:
            ap.error(f"{args.token_file}: {len(ids)} tokens, need B*T+1 = {b * t + 1}")
        if min(ids[: b * t + 1]) < 0 or max(ids[: b * t + 1]) >= v:
            ap.error(f"{args.token_file}: a token id is outside [0, V={v})")
        tokens = torch.tensor(ids[: b * t + 1], dtype=torch.long)
    x = tokens[:-1].view(b, t)  # (B, T)
    y = tokens[1:].view(b, t)  # (B, T)

    # The model before any update: forward, backward, write both files.
    model.zero_grad(set_to_none=True)
    logits, loss = model(x, y)
    loss.backward()
    if args.losses_out is None:
        write_checkpoint(args.out_prefix + "_model.bin", model, args.vp)
        write_state(args.out_prefix + "_state.bin", model, args.vp, x, y, logits, loss.detach())

    model_start = copy.deepcopy(model)  # (for --check with --losses-out)

    # N AdamW steps on the same batch; step 0's forward/backward is recomputed from scratch.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.01, fused=False, foreach=False)
    # The norm written is that of the fp32 gradients summed in float64 (PyTorch's own fp32 norm,
    # which clip_grad_norm_ uses, is off by 2.5e-5 relative on ref_gpt2vocab's 402,432-entry wte
    # gradient; in the scale it clips by, that is noise AdamW does not see).
    losses, norms = [], []
    for _ in range(args.steps):
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        norm = math.sqrt(sum(p.grad.double().square().sum().item() for p in model.parameters()))
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip, foreach=False)
        losses.append(loss.item())
        norms.append(norm)
        opt.step()
    lines = [f"step {i} loss {float(np.float32(lv)):.9g} norm {float(np.float32(n)):.9g}"
             for i, (lv, n) in enumerate(zip(losses, norms))]
    losses_path = args.losses_out or args.out_prefix + "_losses.txt"
    with open(losses_path, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    print("\n".join(lines))
    if args.grad_clip > 0 and min(norms) <= args.grad_clip:
        print(f"note: --grad-clip {args.grad_clip} left step {norms.index(min(norms))} unclipped "
              f"(norm {min(norms):.4g})")

    if args.check and args.losses_out is not None:
        check_start(args.out_prefix, model_start, args.vp)
        check_losses_file(losses_path, args, losses)
    elif args.check:
        check_files(args.out_prefix, args, losses, losses_path)
    if args.fd_check:
        # A few scalars spread over the tensors: wte (tied: embedding + output), wpe, q/k/v
        # thirds of qkvw, biases, LayerNorms, both MLP matrices, the last layer.
        last = l - 1
        picks = [
            ("wte", (int(x[0, 0]), 1)),
            ("wte", (int(y[0, 0]), c - 1)),
            ("wpe", (t - 1, 2)),
            ("ln1w", (0, 3)),
            ("ln1b", (last, 1)),
            ("qkvw", (0, 1, 2)),  # q
            ("qkvw", (last, c + 3, c - 2)),  # k
            ("qkvw", (0, 2 * c + 5, 4)),  # v
            ("qkvb", (last, 2 * c + 1)),
            ("attprojw", (last, 2, 3)),
            ("attprojb", (0, c - 1)),
            ("ln2w", (last, 0)),
            ("ln2b", (0, 2)),
            ("fcw", (0, 4 * c - 1, 1)),
            ("fcb", (last, 7)),
            ("fcprojw", (last, 1, 4 * c - 3)),
            ("fcprojb", (0, 0)),
            ("lnfw", (1,)),
            ("lnfb", (c - 1,)),
        ]
        worst = fd_check(args.out_prefix, picks)
        if worst > 1e-3:
            print(f"fd check FAILED: worst relative error {worst:.2e}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
