"""The code of tools/bench: the engine against PyTorch GPT-2 of the same config on the same device.

For each batch size B (and each precision asked for) it runs the engine's training command for
warm-up + timed steps, parses its step lines (median ms/step over the timed steps), its MFU and
its peak memory, then runs tools/bench_pytorch.py once per PyTorch mode (eager, torch.compile) on
the same B and T, and prints one markdown table with header lines saying where, when and how the
figures were taken. Out-of-memory on either side is an "OOM" row, never a crash; an engine that
cannot run on a GPU there ("no CUDA GPU available") stops the benchmark at its first run.

The model arithmetic mirrors the Rust crate (tests/bench_tool.rs checks that they agree):
src/config.rs (the dN descriptors), src/params.rs (the parameter count) and src/mfu.rs (FLOPs per
token = 6N + 6*L*C*T and the peak TFLOP/s table).

Python 3 standard library only: the GPU machines have PyTorch but the build machine need not.
Besides the benchmark itself there are modes that need neither a GPU nor PyTorch (tests use them):
--dry-run, --parse-log FILE, --report RESULTS.json and --mfu-info.
"""
import argparse
import datetime
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = "train-gpt2-cuda"
PRECISIONS = ("fp32", "tf32", "bf16")
PYTORCH_MODES = ("eager", "compile")
EXIT_USAGE = 2

# ---------------------------------------------------------------------------------------------
# Model arithmetic: the same numbers as src/config.rs, src/params.rs and src/mfu.rs.

GPT2_VOCAB_SIZE = 50257  # V
VOCAB_PAD = 128  # Vp = V padded up to a multiple of this
MAX_SEQ_LEN = 1024  # maxT of every dN model
MAX_DEPTH = 256  # dN with N in 1..=256, as GPT2Config::from_descriptor
# depth: (C, NH) of the depths llm.c's descriptor names, as LLMC_GPT2_SIZES in src/config.rs
# (24, 36, 48: GPT-2 medium, large, XL)
LLMC_GPT2_SIZES = {6: (384, 6), 12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25),
                   60: (1920, 30), 72: (2880, 30), 84: (3456, 36)}

# Dense (no sparsity) peak TFLOP/s from NVIDIA's data sheets: (name, fp32, tf32, bf16), as
# PEAK_TFLOPS in src/mfu.rs.
PEAK_TFLOPS = [
    ("A100", 19.5, 156.0, 312.0),
    ("H100 PCIe", 51.2, 378.0, 756.0),
    ("H100", 66.9, 494.7, 989.4),
    ("H200", 66.9, 494.7, 989.4),
]


class UsageError(Exception):
    """A bad argument: reported as 'error: ...' with exit status 2."""


class Stop(Exception):
    """A failure that ends the benchmark before its other runs (the engine cannot use the GPU,
    so neither can they): reported as 'error: ...' with exit status 1, and no table."""


def parse_model(desc):
    """The depth N of the descriptor dN (its dimensions: model_dims)."""
    m = re.fullmatch(r"d(\d+)", desc)
    if not m or not 1 <= int(m.group(1)) <= MAX_DEPTH:
        raise UsageError(
            f"--model '{desc}': expected a descriptor dN with N in 1..={MAX_DEPTH} (d12 is GPT-2 "
            "124M); the PyTorch side builds the same model, so checkpoint files are not taken here"
        )
    return int(m.group(1))


def model_dims(depth):
    """(L, NH, C, V, Vp, maxT) of the model dN: llm.c's (C, NH) where it names the depth, else
    C = 64N, NH = N (GPT2Config::from_descriptor)."""
    c, nh = LLMC_GPT2_SIZES.get(depth, (64 * depth, depth))
    vp = (GPT2_VOCAB_SIZE + VOCAB_PAD - 1) // VOCAB_PAD * VOCAB_PAD
    return depth, nh, c, GPT2_VOCAB_SIZE, vp, MAX_SEQ_LEN


def num_parameters(depth):
    """N: the 16 parameter tensors of src/params.rs, summed."""
    l, _, c, _, vp, max_t = model_dims(depth)
    per_layer = (
        2 * c  # ln1w, ln1b (L, C)
        + 3 * c * c + 3 * c  # qkvw (L, 3C, C), qkvb (L, 3C)
        + c * c + c  # attprojw (L, C, C), attprojb (L, C)
        + 2 * c  # ln2w, ln2b (L, C)
        + 4 * c * c + 4 * c  # fcw (L, 4C, C), fcb (L, 4C)
        + 4 * c * c + c  # fcprojw (L, C, 4C), fcprojb (L, C)
    )
    return vp * c + max_t * c + l * per_layer + 2 * c  # wte (Vp, C), wpe (maxT, C), lnfw, lnfb (C)


def flops_per_token(depth, t):
    """FLOPs of one training step per token at sequence length T: 6N + 6*L*C*T."""
    l, _, c, _, _, _ = model_dims(depth)
    return 6 * num_parameters(depth) + 6 * l * c * t


def peak_tflops(device_name, precision):
    """The peak TFLOP/s of the GPU called device_name in precision, or None (not in the table:
    the NVL parts too, whose peaks are lower than the SXM parts' rows)."""
    upper = (device_name or "").upper()
    if "NVL" in upper:
        return None
    if "H200" in upper:
        row = PEAK_TFLOPS[3]
    elif "H100" in upper and "PCIE" in upper:
        row = PEAK_TFLOPS[1]
    elif "H100" in upper:
        row = PEAK_TFLOPS[2]
    elif "A100" in upper:
        row = PEAK_TFLOPS[0]
    else:
        return None
    return row[1 + PRECISIONS.index(precision)]


def mfu(depth, t, tokens_per_s, peak):
    """The fraction of peak TFLOP/s that tokens_per_s tokens a second at sequence length T are."""
    return flops_per_token(depth, t) * tokens_per_s / (peak * 1e12)


# ---------------------------------------------------------------------------------------------
# The engine's training log (src/train/run.rs):
#   model: L=12 NH=12 C=768 ... (124.5M parameters) on cuda: NVIDIA H100 80GB HBM3 (sm_90)
#   step     3/23 | loss 10.1234 | lr 3.00e-4 | norm 1.234 | 123.4 ms | 33194 tok/s | MFU 39.9%
#   peak memory: 5123.4 MiB


class LogError(Exception):
    """The engine's output lacks what a benchmark needs."""


def parse_engine_log(text, warmup, jsonl=None):
    """The steps, the median ms/step over the steps after the first `warmup` (but those whose
    update was skipped: less work), the median of the engine's own MFU figures (a fraction, None
    where it printed '-'), its peak memory in bytes and the device it named. `jsonl`, the run's
    log.jsonl, gives each step's time unrounded (the step line rounds it to 0.1 ms: 5% of a
    2 ms step)."""
    steps = []
    peak = None
    device = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("model:") and " on " in line:
            device = line.split(" on ", 1)[1].strip()
        elif line.startswith("peak memory:"):
            m = re.fullmatch(r"peak memory:\s*([0-9.]+)\s*MiB", line)
            if not m:
                raise LogError(f"cannot read the peak memory line '{line}'")
            peak = round(float(m.group(1)) * (1 << 20))
        elif re.match(r"step\s+\d+/\d+\s*\|", line):
            steps.append(parse_step_line(line))
    if not steps:
        raise LogError("the engine printed no 'step N/M | ...' lines")
    if len(steps) <= warmup:
        raise LogError(
            f"the engine printed {len(steps)} step lines, not more than the {warmup} warm-up steps"
        )
    unround_ms(steps, jsonl)
    timed = [st for st in steps[warmup:] if not st["skipped"]]
    if not timed:
        raise LogError(f"every step after the {warmup} warm-up steps skipped its update")
    mfus = [st["mfu"] for st in timed if st["mfu"] is not None]
    return {
        "steps_run": len(steps),
        "step_ms": [st["ms"] for st in steps],
        "timed_ms": [st["ms"] for st in timed],
        "ms_per_step": statistics.median(st["ms"] for st in timed),
        "ms_mean": statistics.fmean(st["ms"] for st in timed),
        "engine_mfu": statistics.median(mfus) if len(mfus) == len(timed) else None,
        # (JSON has no NaN)
        "losses": [st["loss"] if math.isfinite(st["loss"]) else None for st in steps],
        "peak_mem_bytes": peak,
        "device": device,
    }


def unround_ms(steps, jsonl):
    """Each parsed step's ms from the run's log.jsonl (text, or None), where it has that step:
    the same time unrounded (a record more than the line's rounding away is of another run, and
    left alone)."""
    exact = {}  # step: its ms in log.jsonl
    for line in (jsonl or "").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and is_int(rec.get("step"), 1) and is_number(rec.get("ms")):
            exact[rec["step"]] = float(rec["ms"])
    for st in steps:
        if abs(exact.get(st["step"], math.inf) - st["ms"]) <= 0.05 + 1e-9:
            st["ms"] = exact[st["step"]]


def parse_step_line(line):
    """{step, steps, loss, ms, tok_s, mfu} of one step line; fields are found by their names."""
    parts = [p.strip() for p in line.split("|")]
    m = re.fullmatch(r"step\s+(\d+)/(\d+)", parts[0])
    out = {"step": int(m.group(1)), "steps": int(m.group(2)), "loss": None, "ms": None}
    out.update(tok_s=None, mfu=None, skipped=any(p.startswith("update skipped") for p in parts))
    try:
        for p in parts[1:]:
            if p.startswith("loss "):
                out["loss"] = float(p[5:])
            elif p.endswith(" ms"):
                out["ms"] = float(p[:-3])
            elif p.endswith(" tok/s"):
                out["tok_s"] = float(p[:-6])
            elif p.startswith("MFU "):
                v = p[4:].strip()
                out["mfu"] = None if v == "-" else float(v.rstrip("%")) / 100
    except ValueError:
        raise LogError(f"cannot read the step line '{line}'") from None
    if out["ms"] is None or out["loss"] is None:
        raise LogError(f"the step line '{line}' has no loss or no 'X ms' field")
    return out


def is_oom_text(text):
    t = text.lower()
    return any(
        k in t
        for k in ("out of memory", "not enough gpu memory", "cuda_error_out_of_memory", "do not fit in memory")
    )


# ---------------------------------------------------------------------------------------------
# Results: one row per (implementation, precision, B). A row holds what was measured; tokens/s,
# MFU and the engine/PyTorch ratio are derived by derive() (when running and in --report).


def derive(rows, meta):
    """Fills tokens_per_s, mfu and ratio of each row from ms_per_step, B, T and meta."""
    depth = parse_model(meta["model"])
    for r in rows:
        r["tokens_per_s"] = r["mfu"] = r["ratio"] = None
        if r["status"] != "ok":
            continue
        r["tokens_per_s"] = r["B"] * r["T"] / (r["ms_per_step"] / 1e3)
        peak = meta.get("peak_tflops") or peak_tflops(meta.get("gpu_name"), r["precision"])
        if meta["device"] == "cuda" and peak:
            r["mfu"] = mfu(depth, r["T"], r["tokens_per_s"], peak)
    for r in rows:
        if r["impl"] == ENGINE or r["status"] != "ok":
            continue
        # the engine as it runs by default; another variant only where it is the one there is
        eng = [
            e for e in rows
            if e["impl"] == ENGINE and e["status"] == "ok"
            and (e["precision"], e["B"], e["T"]) == (r["precision"], r["B"], r["T"])
        ]
        default = [e for e in eng if not e.get("variant")]
        if default or len(eng) == 1:
            r["ratio"] = (default or eng)[0]["tokens_per_s"] / r["tokens_per_s"]
    return rows


COLUMNS = ["implementation", "precision", "B", "T", "ms/step", "tokens/s", "MFU", "peak memory",
           "engine / this"]


def table_cells(r):
    status = r["status"]
    name = r["impl"]
    head = [name + (f" ({r['variant']})" if r.get("variant") else ""), r["precision"], str(r["B"]),
            str(r["T"])]
    if status == "ok":
        mem = r.get("peak_mem_bytes")
        mem_text = "-" if mem is None else f"{mem / (1 << 20):,.0f} MiB"
        if mem is not None and r.get("peak_mem_source") == "nvidia-smi":
            mem_text += " (smi)"
        rest = [
            f"{r['ms_per_step']:,.1f}",
            f"{r['tokens_per_s']:,.0f}",
            "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
            mem_text,
        ]
    else:
        what = {"oom": "OOM", "n/a": "n/a"}.get(status, "error")
        if r.get("note") and status != "oom":
            note = r["note"] if len(r["note"]) <= 100 else r["note"][:97] + "..."
            what += f" ({note})"
        rest = [what, "-", "-", "-"]
    if name == ENGINE:
        ratio = ""
    else:
        ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
    return head + rest + [ratio]


def format_table(rows):
    """A markdown table, columns padded to equal width; numbers right-aligned."""
    body = [table_cells(r) for r in rows]
    widths = [max(3, max(len(x) for x in col)) for col in zip(COLUMNS, *body)]
    right = [False, False] + [True] * 7

    def line(cells):
        padded = [c.rjust(w) if ra else c.ljust(w) for c, w, ra in zip(cells, widths, right)]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if ra else "-" * w for w, ra in zip(widths, right)) + " |"
    return "\n".join([line(COLUMNS), rule] + [line(c) for c in body])


def plural(n, what):
    return f"{n} {what}" + ("" if n == 1 else "s")


def format_report(meta, rows):
    """Header lines, the table and the notes under it: what docs/benchmarks.md takes as is."""
    derive(rows, meta)
    out = [f"- device: {meta['device_text']}"]
    out.append(f"- date: {meta['date']}")
    out.append(f"- command: `{meta['command']}`")
    out.append(f"- ran: {meta['ran']}")
    out.append(
        f"- timing: median ms/step over {plural(meta['steps'], 'timed step')} after "
        f"{plural(meta['warmup'], 'warm-up step')}; tokens/s = B*T / (ms/step)"
    )
    depth = parse_model(meta["model"])
    t = meta["T"]
    flops = f"{flops_per_token(depth, t):,}"
    if meta["device"] != "cuda":
        out.append(f"- MFU: not computed on the CPU ({meta['model']}: {flops} FLOPs/token at T={t})")
    elif meta.get("peak_tflops"):
        out.append(f"- MFU = {flops} FLOPs/token ({meta['model']}, T={t}: 6N + 6LCT) x tokens/s / "
                   f"{meta['peak_tflops']} TFLOP/s (--peak-tflops)")
    else:
        peaks = [peak_tflops(meta.get("gpu_name"), p) for p in PRECISIONS]
        if peaks[0] is None and meta.get("gpu_name"):
            out.append(f"- MFU: '{meta['gpu_name']}' is not in the peak table (give --peak-tflops)")
        elif peaks[0] is None:
            out.append("- MFU: not computed: the GPU's name is unknown (no nvidia-smi, and no run "
                       "printed it); give --gpu-name or --peak-tflops")
        else:
            out.append(
                f"- MFU = {flops} FLOPs/token ({meta['model']}, T={t}: 6N + 6LCT) x tokens/s / peak; "
                f"peak {peaks[0]} / {peaks[1]} / {peaks[2]} TFLOP/s for fp32 / tf32 / bf16"
            )
    out.append("")
    out.append(format_table(rows))
    out.append("")
    notes = ["'engine / this' is the engine's tokens/s over this row's, same precision, B and T "
             "(the engine as it runs by default where the table has it)."]
    srcs = {}  # source: the implementations that use it
    for r in rows:
        s = r.get("peak_mem_source")
        if s == "nvidia-smi":
            s = "(smi) nvidia-smi's memory.used above its level before the run (CUDA context included)"
        if r["status"] == "ok" and s and r["impl"] not in srcs.setdefault(s, []):
            srcs[s].append(r["impl"])
    if srcs:
        notes.append("peak memory: " + "; ".join(f"{', '.join(i)}: {s}" for s, i in srcs.items()) + ".")
    if any(r["impl"] != ENGINE and r["precision"] == "bf16" for r in rows):
        notes.append("PyTorch bf16 is autocast: fp32 weights and optimizer, bf16 matrix products.")
    notes += [f"{r['impl']} {r['precision']} B={r['B']}: {r['note']}" for r in rows
              if r["status"] == "ok" and r.get("note")]
    out.extend(notes)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Arguments


def positive_int_list(text, flag):
    """The positive integers of 'text', separated by commas."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            if "," in text:
                raise UsageError(f"{flag} '{text}': each value must be a positive integer, got '{part}'")
            raise UsageError(f"{flag} '{text}': must be a positive integer")
        values.append(int(part))
    return values


def without_repeats(values, flag):
    """`values` with each value once, in the order first given; a note on stderr for a repeat
    (--batch 4,4 runs B=4 once, as --precision fp32,fp32 runs fp32 once)."""
    once = list(dict.fromkeys(values))
    repeated = list(dict.fromkeys(v for i, v in enumerate(values) if v in values[:i]))
    if repeated:
        print(f"note: {flag}: {', '.join(str(v) for v in repeated)} given more than once, run once",
              file=sys.stderr)
    return once


def positive_number(text, flag):
    """A finite number > 0, as the engine's own check of its --peak-tflops (src/train/args.rs)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} must be a positive number, got '{text}'")
    return value


def build_parser():
    p = argparse.ArgumentParser(
        prog="tools/bench",
        description="Runs the engine and PyTorch GPT-2 of the same config on the same device and "
        "prints one markdown table: implementation, precision, B, T, ms/step, tokens/s, MFU, peak "
        "memory, and the engine/PyTorch tokens/s ratio.",
        epilog="Exit status: 0 when every run gave a figure, OOM or n/a; 1 when a run failed "
        "otherwise (an engine that cannot run on a GPU there stops the benchmark at its first run); "
        "2 for a bad argument or a bad --report file. A value given twice in --batch, --precision or "
        "--pytorch runs once.",
    )
    p.add_argument("--engine", help="the engine binary, or 'none' for PyTorch only (default: "
                   ".gpu/bin/train-gpt2-cuda if present, else target/release/train-gpt2-cuda)")
    p.add_argument("--model", default="d12", help="dN (default d12, GPT-2 124M)")
    p.add_argument("--seq", default="1024", help="T (default 1024, at most 1024)")
    p.add_argument("--batch", default="4,8,16", help="B values separated by commas (default 4,8,16)")
    p.add_argument("--steps", default="20", help="timed steps (default 20)")
    p.add_argument("--warmup", default="3", help="untimed steps first (default 3)")
    p.add_argument("--precision", nargs="+", default=["fp32"], metavar="P",
                   help="fp32, tf32 and/or bf16, separated by spaces or commas (default fp32)")
    p.add_argument("--pytorch", default="eager,compile",
                   help="PyTorch modes: eager, compile, both separated by a comma, or none")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--kernels", choices=["fused", "plain"],
                   help="the engine's --kernels (default: the engine's own choice, fused in bf16 "
                        "where the model allows); run twice to compare the two paths")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="the engine's --no-cuda-graphs: every kernel launched from the host (run "
                        "with and without to measure what the graphs save)")
    p.add_argument("--recompute", choices=["none", "gelu"],
                   help="the engine's --recompute: gelu keeps one layer's GELU output and computes "
                        "each layer's again in the backward (less memory, one kernel a layer more)")
    p.add_argument("--python", default=os.environ.get("TORCH_PYTHON") or sys.executable,
                   help="the Python with PyTorch (default: $TORCH_PYTHON, else this Python)")
    p.add_argument("--out", help="write every raw result and the run's details as JSON here")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--timeout", default="1800", help="seconds one run may take (default 1800)")
    p.add_argument("--gpu-name", help="the GPU's name for the peak table (default: from nvidia-smi)")
    p.add_argument("--peak-tflops", help="peak TFLOP/s for MFU, instead of the table")
    p.add_argument("-v", "--verbose", action="store_true", help="print each run's output on stderr")
    tools = p.add_argument_group("tools that run nothing (for tests and for re-reading results)")
    tools.add_argument("--report", metavar="RESULTS.json", nargs="+",
                       help="print the table of a saved --out file; of several, one table of all "
                       "their rows (same device, model, T and timing)")
    tools.add_argument("--parse-log", metavar="FILE", help="parse an engine log (with --warmup) to JSON")
    tools.add_argument("--mfu-info", action="store_true",
                       help="print L, NH, C, N, FLOPs/token (--model, --seq) and the peaks for "
                       "--gpu-name (or --peak-tflops) as JSON")
    return p


def check_args(a):
    """Validates and normalises the arguments in place; UsageError on anything wrong."""
    a.depth = parse_model(a.model)
    a.batches = without_repeats(positive_int_list(a.batch, "--batch"), "--batch")
    if "," in a.seq:
        raise UsageError(f"--seq '{a.seq}': one T per run")
    (a.t,) = positive_int_list(a.seq, "--seq")
    if a.t > MAX_SEQ_LEN:
        raise UsageError(f"--seq {a.t}: T must be at most {MAX_SEQ_LEN}, the maxT of the dN models")
    (a.steps_n,) = positive_int_list(a.steps, "--steps")
    if not a.warmup.isdigit():
        raise UsageError(f"--warmup '{a.warmup}': expected an integer >= 0")
    a.warmup_n = int(a.warmup)
    (a.timeout_s,) = positive_int_list(a.timeout, "--timeout")
    precisions = []
    for item in a.precision:
        for p in item.split(","):
            p = p.strip().lower()
            if p not in PRECISIONS:
                raise UsageError(f"--precision: unknown precision '{p}': expected fp32, tf32 or bf16")
            precisions.append(p)
    a.precisions = precisions = without_repeats(precisions, "--precision")
    if a.device == "cpu" and "tf32" in precisions:
        raise UsageError("--precision tf32 is a GPU tensor-core mode: not with --device cpu")
    if a.device == "cpu" and a.kernels:
        raise UsageError("--kernels chooses the CUDA engine's kernels: not with --device cpu")
    if a.device == "cpu" and a.recompute:
        raise UsageError("--recompute changes the CUDA engine's backward pass: not with --device cpu")
    modes = [m.strip() for m in a.pytorch.split(",")]
    if modes == ["none"]:
        modes = []
    for m in modes:
        if m not in PYTORCH_MODES:
            raise UsageError(f"--pytorch: unknown mode '{m}': expected eager, compile, both, or none")
    a.modes = without_repeats(modes, "--pytorch")
    if a.peak_tflops is not None:
        a.peak_tflops = positive_number(a.peak_tflops, "--peak-tflops")
    if a.engine is None:
        gpu = os.path.join(REPO, ".gpu", "bin", ENGINE)
        a.engine = gpu if os.path.exists(gpu) else os.path.join(REPO, "target", "release", ENGINE)
    if a.engine == "none":
        a.engine = None
    elif os.path.isfile(a.engine) and os.sep not in a.engine:
        a.engine = os.path.join(".", a.engine)  # run this file, not one of that name on the PATH
    if a.engine is None:
        pass
    elif not (os.path.isfile(a.engine) and os.access(a.engine, os.X_OK)):
        msg = (f"the engine binary '{a.engine}' is missing or not executable: build it (cargo build "
               "--release, or ../shared/gpu/pack for a GPU machine), give --engine PATH, or --engine none")
        if not a.dry_run:
            raise UsageError(msg)
        print(f"warning: {msg}", file=sys.stderr)
    if a.engine is None and not a.modes:
        raise UsageError("nothing to run: --engine none and --pytorch none")


# ---------------------------------------------------------------------------------------------
# Running


def engine_command(a, b, precision, out_dir):
    train = os.path.join(REPO, "data", "shakespeare", "train.bin")
    cmd = [a.engine, "--device", a.device, "--model", a.model, "--batch", str(b), "--seq", str(a.t),
           "--steps", str(a.warmup_n + a.steps_n), "--val-every", "0", "--val-batches", "1",
           "--sample-tokens", "0", "--train", train,
           # the validation shard may be too short for a large B*T; only the final loss uses it
           "--val", train, "--out-dir", out_dir,
           # no training state beside the final checkpoint (at d12 in bf16: 1.5 GB to write)
           "--no-state"]
    # the engine's own precision flag; tf32 is fp32 storage with TF32 tensor-core matmuls
    cmd += ["--precision", "bf16" if precision == "bf16" else "fp32"]
    if precision == "tf32":
        cmd.append("--tf32")
    if a.kernels:
        cmd += ["--kernels", a.kernels]
    if a.no_cuda_graphs:
        cmd.append("--no-cuda-graphs")
    if a.recompute:
        cmd += ["--recompute", a.recompute]
    return cmd


def engine_skips(a, precision):
    """Why the engine does not run in `precision` on `a.device`, or None when it does."""
    if precision == "bf16" and a.device == "cpu":
        return "the CPU engine computes in fp32 only"
    return None


def pytorch_command(a, mode, precision, b):
    cmd = [a.python, os.path.join(REPO, "tools", "bench_pytorch.py"), "--device", a.device,
           "--model", a.model, "--batch", str(b), "--seq", str(a.t), "--steps", str(a.steps_n),
           "--warmup", str(a.warmup_n)]
    if mode == "compile":
        cmd.append("--compile")
    if precision != "fp32":
        cmd.append("--" + precision)
    return cmd


def engine_env(a):
    """The engine's environment: the project root for its data, and on the GPU the CUDA library
    folders that .gpu/on-gpu.sh adds (CUDA's own, then the pip NVIDIA packages PyTorch brought)."""
    env = dict(os.environ)
    env.setdefault("CARGO_MANIFEST_DIR", REPO)
    if a.device == "cuda":
        dirs = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib",
                "/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu"]
        try:
            out = subprocess.run([a.python, "-c", "import nvidia; print(*nvidia.__path__)"],
                                 capture_output=True, text=True, timeout=60).stdout
            for root in out.split():
                dirs += sorted(os.path.join(root, d, "lib") for d in os.listdir(root))
        except (OSError, subprocess.SubprocessError):
            pass
        have = [d for d in dirs if os.path.isdir(d)]
        old = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = ":".join(have + ([old] if old else []))
    return env


def smi(*query):
    """nvidia-smi --query-gpu=... of the first visible GPU: a list of strings, or None. The
    environment variable BENCH_NVIDIA_SMI names another program to ask (tests use a stand-in)."""
    exe = shutil.which(os.environ.get("BENCH_NVIDIA_SMI", "nvidia-smi"))
    if not exe:
        return None
    vis = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    cmd = [exe, f"--query-gpu={','.join(query)}", "--format=csv,noheader,nounits"]
    if vis:
        cmd += ["-i", vis]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return None
    return [x.strip() for x in lines[0].split(",")]


class MemorySampler:
    """Samples the GPU's memory.used (nvidia-smi) while a process runs: the peak above the level
    before it started, for an engine that prints no peak memory of its own."""

    def __init__(self):
        base = smi("memory.used")
        self.base = int(base[0]) if base and base[0].isdigit() else None
        self.peak = None
        self.stop = threading.Event()
        self.thread = None

    def __enter__(self):
        if self.base is not None:
            self.thread = threading.Thread(target=self.run, daemon=True)
            self.thread.start()
        return self

    def run(self):
        while not self.stop.is_set():
            v = smi("memory.used")
            if v and v[0].isdigit():
                self.peak = max(self.peak or 0, int(v[0]))
            self.stop.wait(0.25)

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread:
            self.thread.join()

    def bytes(self):
        if self.base is None or self.peak is None:
            return None
        return max(self.peak - self.base, 0) << 20


def run_process(cmd, env, timeout, verbose):
    """(returncode, stdout, stderr); returncode None on a timeout."""
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        def text(x):
            return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
        rc, out, err = None, text(e.stdout), text(e.stderr)
    if verbose:
        sys.stderr.write(out + err)
    return rc, out, err


def last_line(text):
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1].strip()[:300] if lines else "no output"


def error_line(out, err):
    """The engine's error, whole: its first 'error: ...' line on stderr (src/main.rs prints the
    error and its causes on one), else the last line of its output."""
    for line in err.splitlines():
        if line.startswith("error:"):
            return line.strip()
    return last_line(err or out)


# The engine's errors that say it cannot run on a GPU at all here (src/gpu/context.rs, and
# src/gpu/mod.rs for a build without kernels): no other run can do better.
NO_GPU_ERRORS = ("no CUDA GPU available", "this build has no CUDA kernels")


def failure_row(row, rc, out, err, timeout, line):
    """`row` as a failed run: an OOM, a timeout or an error, `line` its output's telling line."""
    if rc is None:
        row.update(status="error", note=f"timed out after {timeout} s")
    elif is_oom_text(err + out) or rc == -9:
        row.update(status="oom", note="killed by SIGKILL (host out of memory?)" if rc == -9 else line)
    else:
        row.update(status="error", note=f"exit status {rc}: {line}")
    return row


def engine_variant(a):
    """What an engine row runs other than the default (its kernels, graphs, recomputation), as
    the table names it, or None."""
    parts = [f"{a.kernels} kernels"] if a.kernels else []
    parts += ["no CUDA graphs"] if a.no_cuda_graphs else []
    parts += [f"{a.recompute} recomputed"] if a.recompute else []
    return ", ".join(parts) or None


def engine_ran(device):
    """(precision, kernels) that a GPU engine's model line says it ran ("cuda: NAME, bf16, fused
    kernels, ..."; tf32 where fp32 has "TF32 matmuls"), or None (a CPU engine, or a line that
    names neither)."""
    m = re.match(r"cuda: .*?, (fp32|bf16)(, TF32 matmuls)?(?:, (plain|fused) kernels)?",
                 device or "")
    if not m:
        return None
    return ("tf32" if m.group(2) else m.group(1)), m.group(3) and f"{m.group(3)} kernels"


def run_engine(a, b, precision, tmp, env):
    row = {"impl": ENGINE, "precision": precision, "B": b, "T": a.t, "status": "ok",
           "variant": engine_variant(a)}
    skip = engine_skips(a, precision)
    if skip:
        row.update(status="n/a", note=skip)
        return row
    out_dir = os.path.join(tmp, f"engine-B{b}-{precision}")
    cmd = engine_command(a, b, precision, out_dir)
    row["command"] = shlex.join(cmd)
    sampler = MemorySampler() if a.device == "cuda" else None
    if sampler:
        with sampler:
            rc, out, err = run_process(cmd, env, a.timeout_s, a.verbose)
    else:
        rc, out, err = run_process(cmd, env, a.timeout_s, a.verbose)
    try:
        with open(os.path.join(out_dir, "log.jsonl"), encoding="utf-8", errors="replace") as f:
            jsonl = f.read()
    except OSError:
        jsonl = None
    shutil.rmtree(out_dir, ignore_errors=True)  # the final checkpoint
    row["log"] = out[-20000:]
    if rc != 0:
        return failure_row(row, rc, out, err, a.timeout_s, error_line(out, err))
    try:
        parsed = parse_engine_log(out, a.warmup_n, jsonl)
    except LogError as e:
        row.update(status="error", note=str(e))
        return row
    ran = engine_ran(parsed["device"])
    want = (precision, f"{a.kernels} kernels" if a.kernels else None)
    if ran and (ran[0] != want[0] or (want[1] and want[1] != ran[1])):
        row.update(status="error", note=f"the engine ran {', '.join(filter(None, ran))}, not "
                   f"{', '.join(filter(None, want))} (its model line: on {parsed['device']})")
        return row
    row.update(parsed)
    if row["peak_mem_bytes"] is not None:
        row["peak_mem_source"] = ("its 'peak memory' line (host RSS)" if a.device == "cpu"
                                  else "its 'peak memory' line")
    elif sampler and sampler.bytes() is not None:
        row["peak_mem_bytes"] = sampler.bytes()
        row["peak_mem_source"] = "nvidia-smi"
    return row


def run_pytorch(a, mode, precision, b):
    impl = f"pytorch-{mode}"
    row = {"impl": impl, "precision": precision, "B": b, "T": a.t, "status": "ok"}
    cmd = pytorch_command(a, mode, precision, b)
    row["command"] = shlex.join(cmd)
    rc, out, err = run_process(cmd, None, a.timeout_s, a.verbose)
    result = None
    for line in out.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "impl" in obj:
            result = obj
    if result is not None and result.get("error") == "out of memory":
        row.update(status="oom", note=result.get("message", ""))
        return row
    if rc != 0 or result is None:
        if rc == 0:
            rc = "0 but no result line"
        return failure_row(row, rc, out, err, a.timeout_s, last_line(err or out))
    # (a line of another configuration would put its figures in this row)
    for key, want in (("impl", impl), ("precision", precision), ("B", b), ("T", a.t),
                      ("model", a.model)):
        if key in result and result[key] != want:
            row.update(status="error", note=f"PyTorch's result line has {key} {result[key]!r}, "
                       f"not {want!r}")
            return row
    row.update({k: v for k, v in result.items() if k not in ("impl", "precision", "B", "T")})
    if "params" in result and result["params"] != num_parameters(a.depth):
        row["note"] = (f"warning: PyTorch's model has {result.get('params')} parameters, the engine's "
                       f"{num_parameters(a.depth)}")
        print(f"\n{row['note']}", file=sys.stderr)
    if a.device == "cuda" and result.get("peak_mem_source") == "torch.cuda.max_memory_reserved":
        row["peak_mem_source"] = "torch.cuda.max_memory_reserved (max_memory_allocated in the JSON)"
    return row


def describe_device(a):
    """(text for the header, GPU name or None)."""
    if a.device == "cuda":
        info = smi("name", "driver_version", "memory.total")
        if info and len(info) == 3:
            return f"{info[0]}, driver {info[1]}, {int(info[2]):,} MiB", info[0]
        return "a CUDA GPU (no nvidia-smi, and no run printed its name)", None
    name = "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {name}, {os.cpu_count()} logical cores", None


def git_commit():
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=30)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def check_torch(a):
    """PyTorch's version, or UsageError when the PyTorch side cannot run."""
    probe = "import torch; print(torch.__version__, torch.cuda.is_available())"
    try:
        p = subprocess.run([a.python, "-c", probe], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        p = None
        why = str(e)
    if p is None or p.returncode != 0:
        why = last_line(p.stderr) if p is not None else why
        raise UsageError(f"PyTorch is not importable by '{a.python}' ({why}): give --python (or "
                         "TORCH_PYTHON) a Python with torch, or --pytorch none")
    version, cuda = p.stdout.split()[-2:]
    if a.device == "cuda" and cuda != "True":
        raise UsageError(f"--device cuda, but PyTorch {version} in '{a.python}' sees no CUDA GPU")
    return version


def plan(a):
    """(implementation, precision, B, PyTorch mode or None for the engine) of every run, in order:
    per precision and B, the engine first, then each PyTorch mode."""
    runs = []
    for precision in a.precisions:
        for b in a.batches:
            if a.engine is not None:
                runs.append((ENGINE, precision, b, None))
            for m in a.modes:
                runs.append((f"pytorch-{m}", precision, b, m))
    return runs


def bench(a):
    runs = plan(a)
    if a.dry_run:
        env_note = "CARGO_MANIFEST_DIR=" + REPO
        if a.device == "cuda":
            env_note += " and the CUDA library folders on LD_LIBRARY_PATH (as .gpu/on-gpu.sh)"
        print(f"# engine runs with {env_note}")
        for impl, precision, b, mode in runs:
            if mode is None:
                skip = engine_skips(a, precision)
                if skip:
                    print(f"# {ENGINE} {precision} B={b}: not run ({skip})")
                else:
                    print(shlex.join(engine_command(a, b, precision, f"<tmp>/engine-B{b}-{precision}")))
            else:
                print(shlex.join(pytorch_command(a, mode, precision, b)))
        return 0

    torch_version = check_torch(a) if a.modes else None
    device_text, gpu_name = describe_device(a)
    env = engine_env(a) if a.engine else None
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench-")
    try:
        for i, (impl, precision, b, mode) in enumerate(runs):
            sys.stderr.write(f"bench: [{i + 1}/{len(runs)}] {impl} {precision} B={b} T={a.t} ... ")
            sys.stderr.flush()
            start = time.time()
            if mode is None:
                row = run_engine(a, b, precision, tmp, env)
            else:
                row = run_pytorch(a, mode, precision, b)
            rows.append(row)
            if mode is None and row["status"] == "error" and any(e in row["note"] for e in NO_GPU_ERRORS):
                sys.stderr.write(f"failed ({time.time() - start:.0f} s)\n")
                left = len(runs) - i - 1
                raise Stop(f"{ENGINE} cannot run on a GPU here, so tools/bench stopped"
                           + (f" ({plural(left, 'other run')} skipped)" if left else "")
                           + f": {impl} {precision} B={b} ended with {row['note']}")
            if row["status"] == "ok":
                what = f"{row['ms_per_step']:.1f} ms/step"
            else:
                what = row["status"] + (f": {row['note']}" if row.get("note") else "")
            sys.stderr.write(f"{what} ({time.time() - start:.0f} s)\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if gpu_name is None and a.device == "cuda":  # no nvidia-smi: the name the runs reported
        for r in rows:
            dev = r.get("device") or ""
            name = re.sub(r"^cuda:\s*", "", dev).split(" (sm_")[0].split(",")[0].strip()
            if r["status"] == "ok" and name:
                gpu_name = name
                device_text = f"{name} (driver unknown: no nvidia-smi)"
                break
    ran = []
    if a.engine:
        ran.append(f"{ENGINE} ({a.engine}" + (f", git {git_commit()}" if git_commit() else "") + ")")
    else:
        ran.append(f"{ENGINE}: not run (--engine none)")
    if a.modes:
        ran.append(f"PyTorch {torch_version} ({', '.join(a.modes)}; {a.python})")
    else:
        ran.append("PyTorch: not run (--pytorch none)")
    meta = {
        "device": a.device,
        "device_text": device_text,
        "gpu_name": a.gpu_name or gpu_name,
        "peak_tflops": a.peak_tflops,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["tools/bench"] + sys.argv[1:]),
        "ran": "; ".join(ran),
        "model": a.model,
        "params": num_parameters(a.depth),
        "T": a.t,
        "steps": a.steps_n,
        "warmup": a.warmup_n,
    }
    report = format_report(meta, rows)
    print(report, end="")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
            f.write("\n")
    failed = [r for r in rows if r["status"] == "error"]
    for r in failed:  # the whole line of what the table's cell may cut short
        print(f"error: {r['impl']} {r['precision']} B={r['B']} T={r['T']}: {r['note']}", file=sys.stderr)
    return 1 if failed else 0


def read_results(path):
    """(meta, rows) of a tools/bench --out file; UsageError naming what is wrong with it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror})")
    try:
        saved = json.loads(data)
    except ValueError as e:  # (UnicodeDecodeError included)
        why = f"not JSON ({e})"
    else:
        why = results_problem(saved)
    if why:
        raise UsageError(f"{path}: not a results file of tools/bench: {why}")
    return saved["meta"], saved["rows"]


def is_int(v, least):
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_model(v):
    try:
        return isinstance(v, str) and parse_model(v) > 0
    except UsageError:
        return False


def is_text(v):
    return isinstance(v, str)


def is_text_or_null(v):
    return v is None or isinstance(v, str)


# What format_report and merge_results read of a results file: (key, whether it must be there,
# the check of its value, what the check wants).
META_FIELDS = [
    ("device", True, lambda v: v in ("cuda", "cpu"), "\"cuda\" or \"cpu\""),
    ("device_text", True, is_text, "a string"),
    ("gpu_name", False, is_text_or_null, "a string or null"),
    ("peak_tflops", False, lambda v: v is None or (is_number(v) and v > 0), "a number > 0 or null"),
    ("date", True, is_text, "a string"),
    ("command", True, is_text, "a string"),
    ("ran", True, is_text, "a string"),
    ("model", True, is_model, f"a descriptor dN with N in 1..={MAX_DEPTH}"),
    ("T", True, lambda v: is_int(v, 1), "a positive integer"),
    ("steps", True, lambda v: is_int(v, 1), "a positive integer"),
    ("warmup", True, lambda v: is_int(v, 0), "an integer >= 0"),
]
ROW_STATUSES = ("ok", "oom", "n/a", "error")
ROW_FIELDS = [
    ("impl", True, is_text, "a string"),
    ("precision", True, lambda v: v in PRECISIONS, "fp32, tf32 or bf16"),
    ("B", True, lambda v: is_int(v, 1), "a positive integer"),
    ("T", True, lambda v: is_int(v, 1), "a positive integer"),
    ("status", True, lambda v: v in ROW_STATUSES, ", ".join(ROW_STATUSES)),
    ("note", False, is_text_or_null, "a string or null"),
    ("variant", False, is_text_or_null, "a string or null"),
]
OK_ROW_FIELDS = [  # and of a row with status ok
    ("ms_per_step", True, lambda v: is_number(v) and v > 0, "a number > 0"),
    ("peak_mem_bytes", False, lambda v: v is None or (is_number(v) and v >= 0), "a number >= 0 or null"),
    ("peak_mem_source", False, is_text_or_null, "a string or null"),
]


def shown(v):
    """A JSON value as the file has it, cut to 60 characters."""
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def fields_problem(obj, fields, where):
    for key, required, check, wanted in fields:
        if key not in obj:
            if required:
                return f"{where}: no '{key}'"
        elif not check(obj[key]):
            return f"{where}: '{key}' is {shown(obj[key])}, expected {wanted}"
    return None


def results_problem(saved):
    """What keeps `saved` (a parsed JSON file) from being a tools/bench --out file's results, or
    None: the fields that the report reads, each of the type it needs."""
    if not isinstance(saved, dict):
        return "not a JSON object with 'meta' and 'rows'"
    for key, kind, what in (("meta", dict, "an object"), ("rows", list, "a list")):
        if key not in saved:
            return f"no '{key}'"
        if not isinstance(saved[key], kind):
            return f"'{key}' is not {what}"
    why = fields_problem(saved["meta"], META_FIELDS, "meta")
    if why:
        return why
    if not saved["rows"]:
        return "'rows' is empty"
    for i, row in enumerate(saved["rows"]):
        if not isinstance(row, dict):
            return f"rows[{i}] is {shown(row)}, not an object"
        why = fields_problem(row, ROW_FIELDS, f"rows[{i}]")
        if not why and row["status"] == "ok":
            why = fields_problem(row, OK_ROW_FIELDS, f"rows[{i}]")
        if why:
            return why
    return None


# What the results of several runs must share to stand in one table.
SAME_IN_ONE_TABLE = ["device", "gpu_name", "peak_tflops", "model", "T", "steps", "warmup"]


def merge_results(results, paths):
    """One (meta, rows) of the results of several runs (e.g. a sweep split over device calls):
    their rows in order, their commands, dates and what ran joined."""
    meta, rows = dict(results[0][0]), list(results[0][1])
    for (m, r), path in zip(results[1:], paths[1:]):
        # (a GPU's name says what it is; a CPU's only the whole description does)
        same = SAME_IN_ONE_TABLE + (["device_text"] if meta.get("device") == "cpu" else [])
        for key in same:
            if m.get(key) != meta.get(key):
                raise UsageError(f"{path}: {key} is {m.get(key)!r}, but {paths[0]} has "
                                 f"{meta.get(key)!r}: not one table")
        for key, sep in (("command", "` and `"), ("ran", "; then ")):
            meta[key] = f"{meta[key]}{sep}{m[key]}"
        if m["date"] != meta["date"].split(" to ")[-1]:
            meta["date"] = f"{meta['date'].split(' to ')[0]} to {m['date']}"
        rows += r
    return meta, rows


def main(argv=None):
    a = build_parser().parse_args(argv)
    try:
        if a.report:
            meta, rows = merge_results([read_results(path) for path in a.report], a.report)
            print(format_report(meta, rows), end="")
            return 0
        if a.parse_log:
            if not a.warmup.isdigit():
                raise UsageError(f"--warmup '{a.warmup}': expected an integer >= 0")
            try:
                with open(a.parse_log) as f:
                    text = f.read()
            except OSError as e:
                raise UsageError(f"{a.parse_log}: cannot read ({e.strerror})")
            try:
                print(json.dumps(parse_engine_log(text, int(a.warmup))))
            except LogError as e:
                print(f"error: {a.parse_log}: {e}", file=sys.stderr)
                return 1
            return 0
        if a.mfu_info:
            depth = parse_model(a.model)
            (t,) = positive_int_list(a.seq, "--seq")
            l, nh, c, _, _, _ = model_dims(depth)
            info = {"model": a.model, "L": l, "NH": nh, "C": c, "T": t,
                    "params": num_parameters(depth), "flops_per_token": flops_per_token(depth, t)}
            if a.gpu_name is not None:
                info["gpu_name"] = a.gpu_name
                info["peak_tflops"] = {p: peak_tflops(a.gpu_name, p) for p in PRECISIONS}
            if a.peak_tflops is not None:  # what a run would take instead of the table
                peak = positive_number(a.peak_tflops, "--peak-tflops")
                info["peak_tflops"] = {p: peak for p in PRECISIONS}
            print(json.dumps(info))
            return 0
        check_args(a)
        return bench(a)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Stop as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
