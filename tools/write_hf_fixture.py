#!/usr/bin/env python3
"""Hugging Face GPT-2 fixtures: a tiny GPT2LMHeadModel from `transformers`, saved the ways the Hub
and `save_pretrained` save one, and its logits, loss and gradients on one batch as an llm.c debug
state. The engine reads the model directories with `--model DIR` (src/formats/hf_gpt2.rs); the
state checks what it computes from them against transformers' own GPT-2, a second implementation
independent of tools/pytorch_reference.py.

Writes, under --out-dir (tests/fixtures):
  hf_tiny/            save_pretrained(): config.json, model.safetensors (fp32, names
                      "transformer.h.0.attn.c_attn.weight", ..., no lm_head: it is tied)
  hf_tiny_sharded/    save_pretrained(max_shard_size=...): several model-0000K-of-0000N.safetensors
                      and model.safetensors.index.json
  hf_tiny_hub_bf16/   the Hub's layout (as openai-community/gpt2's model.safetensors): names without
                      the "transformer." prefix, the attention's causal-mask buffers "h.N.attn.bias"
                      kept, in bf16, plus an explicit "lm_head.weight" equal to wte; config.json
  hf_tiny_torch/       PyTorch's format: config.json and pytorch_model.bin, torch.save of the model's
                      state_dict() (the zip archive; fp32; lm_head.weight sharing wte's storage)
  hf_tiny_torch_sharded/ the fp32 state dict in two torch.save shards, pytorch_model-0000K-of-00002.bin,
                      and pytorch_model.bin.index.json, as transformers wrote sharded pickles
  hf_tiny_torch_bf16/  the same in the Hub's old layout: pytorch_model.bin of the transformer's tensors
                      in bf16 without the prefix, the mask buffers "h.N.attn.bias" and the scalar
                      "h.N.attn.masked_bias" (fp32) kept; config.json
  torch_odd.bin        torch.save of {"ids": arange(5) in int64, "w": arange(6.0).view(2, 3),
                      "tail": arange(10.0)[4:]}: a file the reader opens, whose integers it refuses
                      only when they are read, and a tensor at an offset into its storage
  torch_transposed.bin torch.save of {"t": arange(6.0).view(2, 3).t()}: a view that is not
                      contiguous, which the reader refuses
  hf_tiny_state.bin   llm.c debug state (magic 20240327, version 2, header [magic, 2, B, T]): x, y
                      (B*T int32), logits (B*T*V fp32), loss (fp32), then the gradients of the 16
                      tensors in llm.c's checkpoint order and layout, computed by transformers'
                      GPT2LMHeadModel (eager attention, fp32, CPU) on hf_tiny's weights

GPT-2's Conv1D stores a linear weight as (in_features, out_features); llm.c (and the engine) as
(out_features, in_features): the state's four linear gradients are the transposes of transformers'.
wte's gradient is padded with zero rows to Vp = V rounded up to 128.

The model: V=100 (Vp=128), maxT=16, L=2, NH=4, C=32, activation gelu_new (tanh), no dropout. Its
weights are transformers' initialisation, then perturbed from a seeded generator so that every
tensor matters: biases N(0, 0.02), LayerNorm weights 1 + N(0, 0.1), LayerNorm biases N(0, 0.02),
c_attn weights N(0, 0.15) (so that the attention is far from uniform). Tokens: B*T+1 ids uniform in
[0, V) from a second generator; x = tokens[:-1], y = tokens[1:], viewed as (B, T) with B=2, T=16.
Loss: mean cross-entropy of logits against y.

Usage (tests/fixtures/README.md gives the versions the committed files were made with):
  python tools/write_hf_fixture.py --out-dir tests/fixtures
  python tools/write_hf_fixture.py --check-export DIR [--state tests/fixtures/hf_tiny_state.bin]
The second loads DIR (e.g. `train-gpt2-cuda convert --model tests/fixtures/hf_tiny --out DIR
--format hf`) with transformers' from_pretrained and compares its logits and loss on the state's
batch with the state's (exit status 1 beyond 1e-5 relative to the largest logit); for a folder
with GPT-2's tokenizer files (a model with GPT-2's vocabulary), it instead tokenizes the bundled
plays with transformers' AutoTokenizer from those files and compares the ids with the engine's
shards in data/shakespeare.
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_reference import STATE_MAGIC, STATE_VERSION, VOCAB_PAD, f32_bytes, header_bytes  # noqa: E402

V, MAXT, L, NH, C, B, T = 100, 16, 2, 4, 32, 2, 16


def build_model(seed):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=V, n_positions=MAXT, n_embd=C, n_layer=L, n_head=NH,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, attn_implementation="eager",
                     bos_token_id=V - 1, eos_token_id=V - 1)
    model = GPT2LMHeadModel(cfg)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.transformer.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if ".ln_" in name or name.startswith("ln_f"):
                p.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.02 * noise)
            elif name.endswith("bias"):
                p.copy_(0.02 * noise)
            elif name.endswith("c_attn.weight"):
                p.copy_(0.15 * noise)
    return model


def llmc_grads(model, vp):
    """The 16 gradients in llm.c's order and layout (Conv1D weights transposed, wte padded)."""
    tr = model.transformer

    def stack(fn):
        return torch.stack([fn(blk).grad for blk in tr.h])

    wte = torch.zeros(vp, C)
    wte[:V] = tr.wte.weight.grad
    return [
        wte,
        tr.wpe.weight.grad,
        stack(lambda b: b.ln_1.weight), stack(lambda b: b.ln_1.bias),
        stack(lambda b: b.attn.c_attn.weight).transpose(1, 2), stack(lambda b: b.attn.c_attn.bias),
        stack(lambda b: b.attn.c_proj.weight).transpose(1, 2), stack(lambda b: b.attn.c_proj.bias),
        stack(lambda b: b.ln_2.weight), stack(lambda b: b.ln_2.bias),
        stack(lambda b: b.mlp.c_fc.weight).transpose(1, 2), stack(lambda b: b.mlp.c_fc.bias),
        stack(lambda b: b.mlp.c_proj.weight).transpose(1, 2), stack(lambda b: b.mlp.c_proj.bias),
        tr.ln_f.weight.grad, tr.ln_f.bias.grad,
    ]


def write_state(path, model, seed):
    gen = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, V, (B * T + 1,), generator=gen)
    x, y = tokens[:-1].view(B, T), tokens[1:].view(B, T)
    model.zero_grad()
    logits = model(input_ids=x).logits  # (B, T, V)
    loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    loss.backward()
    vp = (V + VOCAB_PAD - 1) // VOCAB_PAD * VOCAB_PAD
    parts = [header_bytes([STATE_MAGIC, STATE_VERSION, B, T])]
    parts.append(np.ascontiguousarray(x.numpy(), dtype="<i4").tobytes())
    parts.append(np.ascontiguousarray(y.numpy(), dtype="<i4").tobytes())
    parts.append(f32_bytes(logits))
    parts.append(f32_bytes(loss.reshape(1)))
    parts += [f32_bytes(g.contiguous()) for g in llmc_grads(model, vp)]
    with open(path, "wb") as f:
        f.write(b"".join(parts))
    return loss.item()


def write_hub_bf16(out, model, config_src):
    """The Hub's file layout: no "transformer." prefix, mask buffers kept, explicit lm_head."""
    os.makedirs(out, exist_ok=True)
    tensors = {}
    for name, p in model.transformer.state_dict().items():
        tensors[name] = p.detach().to(torch.bfloat16).contiguous()
    for l in range(L):
        mask = torch.tril(torch.ones(MAXT, MAXT)).view(1, 1, MAXT, MAXT)
        tensors[f"h.{l}.attn.bias"] = mask.to(torch.bfloat16)
    tensors["lm_head.weight"] = tensors["wte.weight"].clone()
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(config_src, os.path.join(out, "config.json"))


def write_torch(out_dir, model, config_src):
    """PyTorch's format: torch.save of the state dict, as save_pretrained(safe_serialization=False)
    wrote it, fp32 and (in the Hub's old layout) bf16; and a file of tensors the reader refuses."""
    fp32 = os.path.join(out_dir, "hf_tiny_torch")
    os.makedirs(fp32, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(fp32, "pytorch_model.bin"))
    shutil.copy(config_src, os.path.join(fp32, "config.json"))
    sharded = os.path.join(out_dir, "hf_tiny_torch_sharded")
    os.makedirs(sharded, exist_ok=True)
    state = model.state_dict()
    names = list(state)
    weight_map = {}
    for k, part in enumerate([names[:len(names) // 2], names[len(names) // 2:]]):
        shard = f"pytorch_model-{k + 1:05d}-of-00002.bin"
        torch.save({n: state[n] for n in part}, os.path.join(sharded, shard))
        weight_map.update({n: shard for n in part})
    with open(os.path.join(sharded, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
    shutil.copy(config_src, os.path.join(sharded, "config.json"))
    bf16 = os.path.join(out_dir, "hf_tiny_torch_bf16")
    os.makedirs(bf16, exist_ok=True)
    tensors = {n: p.detach().to(torch.bfloat16) for n, p in model.transformer.state_dict().items()}
    for l in range(L):
        tensors[f"h.{l}.attn.bias"] = torch.tril(torch.ones(MAXT, MAXT)).view(1, 1, MAXT, MAXT)
        tensors[f"h.{l}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(tensors, os.path.join(bf16, "pytorch_model.bin"))
    shutil.copy(config_src, os.path.join(bf16, "config.json"))
    odd = {"ids": torch.arange(5), "w": torch.arange(6.0).view(2, 3), "tail": torch.arange(10.0)[4:]}
    torch.save(odd, os.path.join(out_dir, "torch_odd.bin"))
    torch.save({"t": torch.arange(6.0).view(2, 3).t()}, os.path.join(out_dir, "torch_transposed.bin"))


def check_export(model_dir, state_path):
    """transformers on a model the engine wrote, against the state's logits and loss."""
    model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager").float().eval()
    v = model.config.vocab_size
    raw = open(state_path, "rb").read()
    header = np.frombuffer(raw[:4 * 256], dtype="<i4")
    assert header[0] == STATE_MAGIC, "not a debug state"
    b, t = int(header[2]), int(header[3])
    ints = np.frombuffer(raw[4 * 256:4 * 256 + 8 * b * t], dtype="<i4")
    x = torch.from_numpy(ints[:b * t].astype(np.int64)).view(b, t)
    y = torch.from_numpy(ints[b * t:].astype(np.int64)).view(b, t)
    floats = np.frombuffer(raw[4 * 256 + 8 * b * t:], dtype="<f4")
    want_logits = torch.from_numpy(floats[:b * t * v].copy()).view(b, t, v)
    want_loss = float(floats[b * t * v])
    with torch.no_grad():
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, v), y.reshape(-1)).item()
    err = ((logits - want_logits).abs().max() / want_logits.abs().max()).item()
    loss_err = abs(loss - want_loss) / abs(want_loss)
    print(f"{model_dir}: logits err/max|ref| {err:.2e}, loss {loss:.9g} vs {want_loss:.9g} "
          f"(rel {loss_err:.2e})")
    return err <= 1e-5 and loss_err <= 1e-5


def check_tokenizer(model_dir, corpus="data/shakespeare"):
    """transformers' GPT-2 tokenizer from the folder's vocab.json and merges.txt on the bundled
    plays, against the engine's shards (tiktoken's r50k_base): the same ids, document by
    document, and the text back from them."""
    from transformers import AutoTokenizer
    docs = []
    for shard in ("train.bin", "val.bin"):
        raw = open(os.path.join(corpus, shard), "rb").read()
        tokens = np.frombuffer(raw[4 * 256:], dtype="<u2").tolist()
        doc = []
        for t in tokens[1:] + [50256]:  # each play follows an EOT
            if t == 50256:
                docs.append(doc)
                doc = []
            else:
                doc.append(t)
    plays = sorted(f for f in os.listdir(corpus) if f.endswith(".txt"))
    val = "midsummer_nights_dream.txt"
    plays = [p for p in plays if p != val] + [val]
    ok = len(plays) == len(docs)
    tok = AutoTokenizer.from_pretrained(model_dir)
    for play, want in zip(plays, docs):
        text = open(os.path.join(corpus, play), encoding="utf-8").read()
        got = tok(text)["input_ids"]
        same = got == want and tok.decode(got) == text
        ok &= same
        print(f"{type(tok).__name__} {play}: {len(got)} tokens, "
              f"{'the same ids and text' if same else 'DIFFERENT'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default="tests/fixtures")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--check-export", metavar="DIR")
    ap.add_argument("--state", default="tests/fixtures/hf_tiny_state.bin")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    if args.check_export:
        if os.path.exists(os.path.join(args.check_export, "vocab.json")):
            sys.exit(0 if check_tokenizer(args.check_export) else 1)
        sys.exit(0 if check_export(args.check_export, args.state) else 1)
    model = build_model(args.seed)
    tiny = os.path.join(args.out_dir, "hf_tiny")
    sharded = os.path.join(args.out_dir, "hf_tiny_sharded")
    for d in (tiny, sharded):
        shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(tiny, safe_serialization=True)
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="40KB")
    for d in (tiny, sharded):  # only the model: no generation settings
        gen_cfg = os.path.join(d, "generation_config.json")
        if os.path.exists(gen_cfg):
            os.remove(gen_cfg)
    write_hub_bf16(os.path.join(args.out_dir, "hf_tiny_hub_bf16"), model,
                   os.path.join(tiny, "config.json"))
    write_torch(args.out_dir, model, os.path.join(tiny, "config.json"))
    loss = write_state(os.path.join(args.out_dir, "hf_tiny_state.bin"), model, args.seed)
    shards = sorted(f for f in os.listdir(sharded) if f.endswith(".safetensors"))
    print(f"loss {loss:.9g} (ln V = {np.log(V):.6f}); {len(shards)} shards;",
          json.dumps({"torch": torch.__version__,
                      "transformers": __import__("transformers").__version__}))


if __name__ == "__main__":
    main()
