#!/usr/bin/env python3
"""Does a bf16 training run track the fp32 run of the same seed and data?

    python3 tools/loss_band.py FP32.log BF16.log [--window 25] [--band 0.02] [--val-band 0.02]

Reads two train-gpt2-cuda logs (lines `step    N/M | loss X | ...` and `val loss X`) and compares:
- the training loss averaged over consecutive windows of --window steps (single-step losses are
  noisy: the two runs round differently, so their per-step losses differ by more than their trend);
- every validation loss, in order.
A window or validation loss passes when |bf16 - fp32| <= band * fp32. Prints one line per
comparison and exits 0 when all pass; 1 when one does not, or on bad input (a missing file, a
file without steps, runs of different lengths), with a message saying which.
"""
import argparse
import re
import sys

STEP = re.compile(r"^step\s+(\d+)/(\d+) \| loss ([-+0-9.eEnaif]+)")
VAL = re.compile(r"^val loss ([-+0-9.eEnaif]+)")


def parse(path):
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError as e:
        raise SystemExit(f"error: {path}: cannot read ({e.strerror})") from None
    steps, vals = [], []
    for line in text.splitlines():
        m = STEP.match(line)
        if m:
            steps.append(float(m.group(3)))
            continue
        m = VAL.match(line)
        if m:
            vals.append(float(m.group(1)))
    if not steps:
        raise SystemExit(f"error: {path}: no `step N/M | loss X` lines: not a training log")
    return steps, vals


def compare(fp32, bf16, window, band, val_band):
    """(lines, all_pass) for two parsed logs."""
    (s32, v32), (s16, v16) = fp32, bf16
    if len(s32) != len(s16) or len(v32) != len(v16):
        raise SystemExit(f"error: the runs differ in length: {len(s32)} vs {len(s16)} steps, "
                         f"{len(v32)} vs {len(v16)} validations")
    lines, ok = [], True
    for start in range(0, len(s32), window):
        a = s32[start:start + window]
        b = s16[start:start + window]
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        rel = abs(mb - ma) / abs(ma)
        good = rel <= band
        ok &= good
        lines.append(f"steps {start + 1:>5}-{start + len(a):<5} fp32 {ma:.4f} bf16 {mb:.4f} "
                     f"rel diff {rel:.2e} {'ok' if good else 'FAIL'}")
    for i, (a, b) in enumerate(zip(v32, v16)):
        rel = abs(b - a) / abs(a)
        good = rel <= val_band
        ok &= good
        lines.append(f"val {i:>3}          fp32 {a:.4f} bf16 {b:.4f} rel diff {rel:.2e} "
                     f"{'ok' if good else 'FAIL'}")
    return lines, ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("fp32")
    p.add_argument("bf16")
    p.add_argument("--window", type=int, default=25)
    p.add_argument("--band", type=float, default=0.02)
    p.add_argument("--val-band", type=float, default=0.02)
    a = p.parse_args(argv)
    if a.window < 1 or not a.band > 0 or not a.val_band > 0:
        raise SystemExit("error: --window must be at least 1, --band and --val-band positive")
    lines, ok = compare(parse(a.fp32), parse(a.bf16), a.window, a.band, a.val_band)
    print("\n".join(lines))
    print(f"bf16 tracks fp32 within {a.band:.0%} (windows of {a.window} steps) and "
          f"{a.val_band:.0%} (validation): {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
